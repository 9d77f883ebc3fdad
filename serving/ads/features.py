"""The user x campaign feature vector of the per-campaign linear CTR models (numpy only, vectorised).

Computable at serving time from the request's history (internal item ids, behaviour codes, timestamps), the
catalog and the campaign table (FeatureTables.from_data builds both from a dataset, data.build_data). Every
event gets a weight = behaviour weight x recency decay (half-life RECENCY_HALF_LIFE_S, measured back from the
newest event); "share" below means the weighted share of the history, so each affinity lies in [0, 1]. The bias
is not a feature: each campaign has its own intercept.

  0 leaf_affinity      share of the history in the campaign item's leaf category
  1 top_affinity       share in the item's top category
  2 brand_affinity     share on the item's brand (0 when the item has no brand)
  3 item_interacted    share on the promoted item itself
  4 intent_leaf        1 if the newest event's leaf category is the item's
  5 intent_top         1 if the newest event's top category is the item's
  6 price_match        exp(-|log item price - weighted mean log price of the history|)
  7 audience_category  share in the campaign's target top categories
  8 audience_price     share in the campaign's target price buckets
  9 carted_leaf        share of strong-intent events (add-to-cart, purchase, the conversion event) in the
                       item's leaf
 10 activity           log(1 + events) / log(1 + 50), the user's activity level

A campaign without a promoted item gets 0 for the item features (0-6, 9); only the audience features and the
activity describe it. Items of unknown price (NaN) take the median log price of the priced items (all 0 when
none has a price), so price_match stays finite and is uninformative for them. An empty history (a logged
impression of a user without earlier events; serving refuses one) has every feature 0.

Behaviour weights follow the dataset's event vocabulary (behavior_weights): view 1, add_to_cart 2,
remove_from_cart 0.5 (a removal still signals interest, weakly), purchase 3; any other event name 1, and the
conversion event 3 when its name is not one of those.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from serving.contract import default_limit

FEATURE_NAMES = ("leaf_affinity", "top_affinity", "brand_affinity", "item_interacted", "intent_leaf",
                 "intent_top", "price_match", "audience_category", "audience_price", "carted_leaf", "activity")
NUM_FEATURES = len(FEATURE_NAMES)
# The features that are one value of the profile looked up per campaign (leaf, top, brand affinity, the two
# intents, carted_leaf): pair_features reads them in one gather (FeatureTables.campaign_slots).
LOOKUP_FEATURES = (0, 1, 2, 4, 5, 9)
# Behaviour weight by event name (the default vocabulary's); other names weigh 1, the conversion event 3.
EVENT_WEIGHTS = {"view": 1.0, "add_to_cart": 2.0, "remove_from_cart": 0.5, "purchase": 3.0}
STRONG_EVENTS = ("add_to_cart", "purchase")  # carted_leaf counts these and the conversion event
DEFAULT_EVENTS = ("view", "add_to_cart", "remove_from_cart", "purchase")
RECENCY_HALF_LIFE_S = 3 * 86_400.0
MAX_HISTORY = default_limit("ads_max_history")  # the feature window; `activity` is normalised by it


def behavior_weights(event_names=DEFAULT_EVENTS, conversion_event: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(weight, strong) float64 [1 + len(event_names)] indexed by behaviour code (0 = padding: weight 0)."""
    conversion = event_names[-1] if conversion_event is None else conversion_event
    weight, strong = np.zeros(len(event_names) + 1), np.zeros(len(event_names) + 1)
    for code, name in enumerate(event_names, 1):
        weight[code] = EVENT_WEIGHTS.get(name, 3.0 if name == conversion else 1.0)
        strong[code] = float(name in STRONG_EVENTS or name == conversion)
    return weight, strong


BEHAVIOR_WEIGHTS, STRONG_BEHAVIORS = behavior_weights()  # the default vocabulary: [0, 1, 2, 0.5, 3], codes 2 and 4


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
    behavior_weight: np.ndarray  # float64 [num_behaviors] by behaviour code (0 = padding)
    behavior_strong: np.ndarray  # float64 [num_behaviors] 1 for the strong-intent codes (carted_leaf)

    @classmethod
    def from_data(cls, data) -> "FeatureTables":
        """From a data.build_data.BuildData with campaigns: item columns from its catalog (internal item ids),
        the campaign table from data.campaigns (internal campaign ids 0..C-1), sizes from the catalog."""
        cat, cs = data.catalog, data.campaigns
        if cs is None:
            raise ValueError(f"dataset {data.name!r} has no campaigns (campaigns + ad_impressions); the ads "
                             "models need them")
        weight, strong = behavior_weights(tuple(data.meta.events), data.meta.conversion_event)
        return cls(item_leaf=cat.leaf_category.astype(np.int64), item_top=cat.top_category.astype(np.int64),
                   item_brand=cat.brand.astype(np.int64), item_bucket=cat.price_bucket.astype(np.int64),
                   item_log_price=log_prices(cat.price), campaign_item=np.asarray(cs.item, np.int64),
                   audience_top=np.asarray(cs.audience_top, np.float64),
                   audience_price=np.asarray(cs.audience_price, np.float64),
                   num_leaves=cat.num_leaf_categories, num_tops=cat.num_top_categories, num_brands=cat.num_brands,
                   num_buckets=cat.num_price_buckets, behavior_weight=weight, behavior_strong=strong)

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

    @property
    def num_behaviors(self) -> int:
        """Behaviour codes including padding (0)."""
        return len(self.behavior_weight)

    # Per-campaign columns, gathered once (the tables are frozen): the serving path indexes them per request.
    @functools.cached_property
    def campaign_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ci = self.campaign_item
        return self.item_leaf[ci], self.item_top[ci], self.item_brand[ci], self.item_log_price[ci]

    @functools.cached_property
    def lookup_sections(self) -> dict[str, int]:
        """Where each of a profile's vectors starts in `Profiles.lookup` (see build_profiles), and its size."""
        # top and bucket side by side: the audience features read them as one slice (LinearCtr)
        sizes = {"leaf": self.num_leaves, "brand": self.num_brands, "top": self.num_tops,
                 "bucket": self.num_buckets, "carted_leaf": self.num_leaves, "last_leaf": self.num_leaves,
                 "last_top": self.num_tops, "zero": 1}
        starts = np.cumsum([0] + list(sizes.values()))
        return {**{name: int(start) for name, start in zip(sizes, starts)}, "size": int(starts[-1])}

    @functools.cached_property
    def item_slots(self) -> np.ndarray:
        """int64 [N+1, 7]: where in a profile's lookup row an event of each item adds its share (leaf, top,
        brand, bucket, carted_leaf), then where the newest event sets its intents (last_leaf, last_top)."""
        at = self.lookup_sections
        return np.stack([at["leaf"] + self.item_leaf, at["top"] + self.item_top, at["brand"] + self.item_brand,
                         at["bucket"] + self.item_bucket, at["carted_leaf"] + self.item_leaf,
                         at["last_leaf"] + self.item_leaf, at["last_top"] + self.item_top], axis=1).astype(np.int64)

    @functools.cached_property
    def campaign_slots(self) -> np.ndarray:
        """int64 [C, len(LOOKUP_FEATURES)]: where in a profile's lookup row each campaign reads each of the
        features that are one lookup; a feature that is 0 for the campaign (no promoted item, no brand) reads
        the row's always-zero slot."""
        at = self.lookup_sections
        leaf, top, brand, _ = self.campaign_columns
        has_item = self.campaign_item > 0
        slots = np.stack([at["leaf"] + leaf, at["top"] + top, at["brand"] + brand, at["last_leaf"] + leaf,
                          at["last_top"] + top, at["carted_leaf"] + leaf], axis=1)
        slots[:, LOOKUP_FEATURES.index(2)] = np.where(brand > 0, slots[:, LOOKUP_FEATURES.index(2)], at["zero"])
        return np.where(has_item[:, None], slots, at["zero"]).astype(np.int64)


def log_prices(price: np.ndarray) -> np.ndarray:
    """float64 log prices; unknown (NaN, including the padding row) -> the median log price of the known ones
    (0 when none is known). Prices of 0 count as 1e-6."""
    lp = np.log(np.maximum(np.asarray(price, np.float64), 1e-6))
    known = ~np.isnan(lp)
    return np.where(known, lp, float(np.median(lp[known])) if known.any() else 0.0)


@dataclasses.dataclass(frozen=True)
class Profiles:
    """Per-history aggregates, P histories at once. `lookup` holds a history's per-category vectors side by side
    (FeatureTables.lookup_sections says where), so that one gather reads all of a campaign's lookups; the named
    vectors are views of it."""

    lookup: np.ndarray  # [P, S]: leaf, brand, top, bucket shares, carted_leaf, last_leaf / last_top one-hot, 0
    sections: dict[str, int]
    items: np.ndarray  # [P, H] item ids (0 = pad)
    item_share: np.ndarray  # [P, H] each event's share
    mean_log_price: np.ndarray  # [P]
    activity: np.ndarray  # [P]

    def section(self, name: str) -> np.ndarray:
        """[P, size] view of one section of `lookup` (a name of FeatureTables.lookup_sections)."""
        names = list(self.sections)
        return self.lookup[:, self.sections[name]:self.sections[names[names.index(name) + 1]]]

    leaf = property(lambda self: self.section("leaf"))  # [P, L] weighted shares
    top = property(lambda self: self.section("top"))  # [P, T]
    brand = property(lambda self: self.section("brand"))  # [P, B]
    bucket = property(lambda self: self.section("bucket"))  # [P, Pb]
    carted_leaf = property(lambda self: self.section("carted_leaf"))  # [P, L] strong-intent shares


def build_profiles(tables: FeatureTables, items: np.ndarray, behaviors: np.ndarray,
                   timestamps: np.ndarray) -> Profiles:
    """Histories as right-aligned [P, H] arrays (item 0 = padding; the last column is the newest event)."""
    items = np.atleast_2d(np.asarray(items, np.int64))
    behaviors = np.atleast_2d(np.asarray(behaviors, np.int64))
    ts = np.atleast_2d(np.asarray(timestamps, np.float64))
    valid = items > 0
    now = ts[:, -1:]
    w = tables.behavior_weight[behaviors] * np.exp2(-(now - ts) / RECENCY_HALF_LIFE_S) * valid
    total = np.maximum(w.sum(1, keepdims=True), 1e-12)
    share = w / total
    # One bincount fills every section of every row: each event's share at its leaf, top, brand and price bucket,
    # its strong-intent share at its leaf, and the newest event's leaf and top as one-hot intents (none when the
    # history is empty: a logged impression of a user without earlier events).
    size = tables.lookup_sections["size"]
    p = items.shape[0]
    row = (np.arange(p) * size)[:, None, None]
    slots = tables.item_slots[items] + row  # [P, H, 7]
    index = np.concatenate([slots[:, :, :5].ravel(), slots[:, -1, 5:].ravel()])
    event_weight = np.repeat(share[..., None], 5, axis=-1)
    event_weight[..., 4] *= tables.behavior_strong[behaviors]
    weight = np.concatenate([event_weight.ravel(), np.repeat(valid[:, -1], 2)])
    lookup = np.bincount(index, weights=weight, minlength=p * size).reshape(p, size)
    return Profiles(lookup=lookup, sections=tables.lookup_sections, items=items, item_share=share,
                    mean_log_price=(share * tables.item_log_price[items]).sum(1),
                    activity=np.log1p(valid.sum(1)) / np.log1p(MAX_HISTORY))


def pair_features(tables: FeatureTables, prof: Profiles, p_idx: np.ndarray, c_idx: np.ndarray) -> np.ndarray:
    """Features of (profile p_idx[...], campaign c_idx[...]); the two broadcast to a shape S -> [*S, F]."""
    p_idx, c_idx = np.broadcast_arrays(np.asarray(p_idx, np.int64), np.asarray(c_idx, np.int64))
    out = np.empty(p_idx.shape + (NUM_FEATURES,), np.float64)
    # Leaf / top / brand affinity, both intents, carted_leaf: one gather, 0 where the campaign has no item (or,
    # for the brand, no brand: sharing "no brand" is no affinity).
    out[..., LOOKUP_FEATURES] = prof.lookup[p_idx[..., None], tables.campaign_slots[c_idx]]
    out[..., 3], out[..., 6], out[..., 10] = _direct_features(tables, prof, p_idx, c_idx)
    out[..., 7] = (prof.top[p_idx] * tables.audience_top[c_idx]).sum(-1)
    out[..., 8] = (prof.bucket[p_idx] * tables.audience_price[c_idx]).sum(-1)
    return out


def _direct_features(tables: FeatureTables, prof: Profiles, p_idx, c_idx) -> tuple[np.ndarray, ...]:
    """item_interacted, price_match and activity of (profile p_idx, campaign c_idx), broadcast alike."""
    item = tables.campaign_item[c_idx]
    # Padding events have item 0 and share 0, so a campaign without an item (0) gets 0 here too.
    interacted = (prof.item_share[p_idx] * (prof.items[p_idx] == item[..., None])).sum(-1)
    activity = prof.activity[p_idx]
    price_match = (np.exp(-np.abs(tables.campaign_columns[3][c_idx] - prof.mean_log_price[p_idx]))
                   * ((activity > 0) & (item > 0)))
    return interacted, price_match, activity


class LinearCtr:
    """The per-campaign linear models' logits w_c . x(u, c) + b_c for one history at a time, without building
    x: every feature but item_interacted, price_match and activity is linear in the history's lookup row (a
    lookup, or for the audience features a dot product with the top / bucket shares), so each campaign's weights
    fold into a few slots and one row over those shares. Equal to pair_features @ w + b (up to rounding; test)."""

    def __init__(self, tables: FeatureTables, weights: np.ndarray, bias: np.ndarray):
        at = tables.lookup_sections
        if (tables.audience_top.shape[1], tables.audience_price.shape[1]) != (at["bucket"] - at["top"],
                                                                           at["carted_leaf"] - at["bucket"]):
            raise ValueError(f"audience tables {tables.audience_top.shape}/{tables.audience_price.shape} do not "
                             f"match {tables.num_tops} top categories and {tables.num_buckets} price buckets")
        self.tables, self.bias = tables, bias
        self.lookup_weights = np.ascontiguousarray(weights[:, LOOKUP_FEATURES])
        names = FEATURE_NAMES
        self.audience_weights = np.concatenate(
            [weights[:, [names.index("audience_category")]] * tables.audience_top,
             weights[:, [names.index("audience_price")]] * tables.audience_price], axis=1)
        self.direct_weights = np.ascontiguousarray(
            weights[:, [names.index("item_interacted"), names.index("price_match"), names.index("activity")]])
        self.audience = slice(at["top"], at["carted_leaf"])

    def logits(self, prof: Profiles, c_idx: np.ndarray) -> np.ndarray:
        """float64 [C]: the logits of profile 0 of `prof` for campaigns c_idx [C]."""
        row = prof.lookup[0]
        z = np.einsum("ck,ck->c", row[self.tables.campaign_slots[c_idx]], self.lookup_weights[c_idx])
        z += self.audience_weights[c_idx] @ row[self.audience]
        interacted, price_match, activity = _direct_features(self.tables, prof, 0, c_idx)
        w = self.direct_weights[c_idx]
        return z + w[:, 0] * interacted + w[:, 1] * price_match + w[:, 2] * activity + self.bias[c_idx]


def user_campaign_features(tables: FeatureTables, items: np.ndarray, behaviors: np.ndarray,
                           timestamps: np.ndarray, campaign_ids: np.ndarray) -> np.ndarray:
    """[U, C, F] for U right-aligned histories ([U, H] or one [H] history) against campaigns [C]."""
    prof = build_profiles(tables, items, behaviors, timestamps)
    u = prof.items.shape[0]
    return pair_features(tables, prof, np.arange(u)[:, None], np.asarray(campaign_ids, np.int64)[None, :])

