"""The user x campaign feature vector of the per-campaign linear CTR models (numpy only, vectorised).

Computable at serving time from the request's history (item ids, behaviours, timestamps), the catalog and
the campaign table. Every event gets a weight = behaviour weight x recency decay (half-life
RECENCY_HALF_LIFE_S, measured back from the newest event); "share" below means the weighted share of the
history, so each affinity lies in [0, 1]. The bias is not a feature: each campaign has its own intercept.

  0 leaf_affinity      share of the history in the campaign item's leaf category
  1 top_affinity       share in the item's top category
  2 brand_affinity     share on the item's brand
  3 item_interacted    share on the promoted item itself
  4 intent_leaf        1 if the newest event's leaf category is the item's
  5 intent_top         1 if the newest event's top category is the item's
  6 price_match        exp(-|log item price - weighted mean log price of the history|)
  7 audience_category  share in the campaign's target top categories
  8 audience_price     share in the campaign's target price buckets
  9 carted_leaf        share of add-to-cart / purchase events in the item's leaf (strong intent)
 10 activity           log(1 + events) / log(1 + 50), the user's activity level
"""

from __future__ import annotations

import dataclasses

import numpy as np

from serving.contract import default_limit

FEATURE_NAMES = ("leaf_affinity", "top_affinity", "brand_affinity", "item_interacted", "intent_leaf",
                 "intent_top", "price_match", "audience_category", "audience_price", "carted_leaf", "activity")
NUM_FEATURES = len(FEATURE_NAMES)
# Behaviour code -> weight (0 = padding; a removal still signals interest, weakly).
BEHAVIOR_WEIGHTS = np.array([0.0, 1.0, 2.0, 0.5, 3.0])
RECENCY_HALF_LIFE_S = 3 * 86_400.0
MAX_HISTORY = default_limit("ads_max_history")  # the feature window; `activity` is normalised by it


@dataclasses.dataclass(frozen=True)
class FeatureTables:
    """Catalog columns (indexed by item id, row 0 = padding) and the campaign table (indexed by campaign)."""

    item_leaf: np.ndarray  # int64 [N+1]
    item_top: np.ndarray  # int64 [N+1]
    item_brand: np.ndarray  # int64 [N+1]
    item_bucket: np.ndarray  # int64 [N+1]
    item_log_price: np.ndarray  # float64 [N+1]
    campaign_item: np.ndarray  # int64 [C]
    audience_top: np.ndarray  # float64 [C, T] 0/1
    audience_price: np.ndarray  # float64 [C, P] 0/1
    num_leaves: int
    num_tops: int
    num_brands: int
    num_buckets: int

    @classmethod
    def from_world(cls, world, campaigns) -> "FeatureTables":
        cat, cfg = world.catalog, world.config
        return cls(item_leaf=cat.leaf_category.astype(np.int64), item_top=cat.top_category.astype(np.int64),
                   item_brand=cat.brand.astype(np.int64), item_bucket=cat.price_bucket.astype(np.int64),
                   item_log_price=np.log(np.maximum(cat.price.astype(np.float64), 1e-6)),
                   campaign_item=campaigns.item.astype(np.int64),
                   audience_top=campaigns.audience_top.astype(np.float64),
                   audience_price=campaigns.audience_price.astype(np.float64),
                   num_leaves=cfg.num_leaf_categories, num_tops=cfg.num_top_categories, num_brands=cfg.num_brands,
                   num_buckets=cfg.num_price_buckets)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays) -> "FeatureTables":
        kw = {}
        for f in dataclasses.fields(cls):
            v = np.asarray(arrays[f.name])
            kw[f.name] = int(v) if v.ndim == 0 else v
        return cls(**kw)

    @property
    def num_campaigns(self) -> int:
        return len(self.campaign_item)

    @property
    def num_items(self) -> int:
        return len(self.item_leaf) - 1

    # Per-campaign columns, cached once: the serving path gathers from them.
    @property
    def campaign_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ci = self.campaign_item
        return self.item_leaf[ci], self.item_top[ci], self.item_brand[ci], self.item_log_price[ci]


@dataclasses.dataclass(frozen=True)
class Profiles:
    """Per-history aggregates, P histories at once."""

    leaf: np.ndarray  # [P, L] weighted shares
    top: np.ndarray  # [P, T]
    brand: np.ndarray  # [P, B]
    bucket: np.ndarray  # [P, Pb]
    carted_leaf: np.ndarray  # [P, L]
    items: np.ndarray  # [P, H] item ids (0 = pad)
    item_share: np.ndarray  # [P, H] each event's share
    mean_log_price: np.ndarray  # [P]
    last_leaf: np.ndarray  # [P]
    last_top: np.ndarray  # [P]
    activity: np.ndarray  # [P]


def _scatter(idx: np.ndarray, w: np.ndarray, size: int) -> np.ndarray:
    p = idx.shape[0]
    flat = (np.arange(p)[:, None] * size + idx).ravel()
    return np.bincount(flat, weights=w.ravel(), minlength=p * size).reshape(p, size)


def build_profiles(tables: FeatureTables, items: np.ndarray, behaviors: np.ndarray,
                   timestamps: np.ndarray) -> Profiles:
    """Histories as right-aligned [P, H] arrays (item 0 = padding; the last column is the newest event)."""
    items = np.atleast_2d(np.asarray(items, np.int64))
    behaviors = np.atleast_2d(np.asarray(behaviors, np.int64))
    ts = np.atleast_2d(np.asarray(timestamps, np.float64))
    valid = items > 0
    now = ts[:, -1:]
    w = BEHAVIOR_WEIGHTS[behaviors] * np.exp2(-(now - ts) / RECENCY_HALF_LIFE_S) * valid
    total = np.maximum(w.sum(1, keepdims=True), 1e-12)
    share = w / total
    leaf = tables.item_leaf[items]
    carted = share * ((behaviors == 2) | (behaviors == 4))
    return Profiles(
        leaf=_scatter(leaf, share, tables.num_leaves), top=_scatter(tables.item_top[items], share, tables.num_tops),
        brand=_scatter(tables.item_brand[items], share, tables.num_brands),
        bucket=_scatter(tables.item_bucket[items], share, tables.num_buckets),
        carted_leaf=_scatter(leaf, carted, tables.num_leaves), items=items, item_share=share,
        mean_log_price=(share * tables.item_log_price[items]).sum(1), last_leaf=leaf[:, -1],
        last_top=tables.item_top[items[:, -1]],
        activity=np.log1p(valid.sum(1)) / np.log1p(MAX_HISTORY))


def pair_features(tables: FeatureTables, prof: Profiles, p_idx: np.ndarray, c_idx: np.ndarray) -> np.ndarray:
    """Features of (profile p_idx[...], campaign c_idx[...]); the two broadcast to a shape S -> [*S, F]."""
    p_idx, c_idx = np.broadcast_arrays(np.asarray(p_idx, np.int64), np.asarray(c_idx, np.int64))
    c_leaf, c_top, c_brand, c_lp = tables.campaign_columns
    lf, tp = c_leaf[c_idx], c_top[c_idx]
    out = np.empty(p_idx.shape + (NUM_FEATURES,), np.float64)
    out[..., 0] = prof.leaf[p_idx, lf]
    out[..., 1] = prof.top[p_idx, tp]
    out[..., 2] = prof.brand[p_idx, c_brand[c_idx]]
    hit = prof.items[p_idx] == tables.campaign_item[c_idx][..., None]
    out[..., 3] = (prof.item_share[p_idx] * hit).sum(-1)
    out[..., 4] = prof.last_leaf[p_idx] == lf
    out[..., 5] = prof.last_top[p_idx] == tp
    out[..., 6] = np.exp(-np.abs(c_lp[c_idx] - prof.mean_log_price[p_idx]))
    out[..., 7] = (prof.top[p_idx] * tables.audience_top[c_idx]).sum(-1)
    out[..., 8] = (prof.bucket[p_idx] * tables.audience_price[c_idx]).sum(-1)
    out[..., 9] = prof.carted_leaf[p_idx, lf]
    out[..., 10] = prof.activity[p_idx]
    return out


def user_campaign_features(tables: FeatureTables, items: np.ndarray, behaviors: np.ndarray,
                           timestamps: np.ndarray, campaign_ids: np.ndarray) -> np.ndarray:
    """[U, C, F] for U right-aligned histories ([U, H] or one [H] history) against campaigns [C]."""
    prof = build_profiles(tables, items, behaviors, timestamps)
    u = prof.items.shape[0]
    return pair_features(tables, prof, np.arange(u)[:, None], np.asarray(campaign_ids, np.int64)[None, :])

