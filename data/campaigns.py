"""Ad campaigns on top of a simulated World: creatives, target audiences, a hidden CTR model and logs.

Each campaign promotes one item (the world's `campaign_item`), has a creative (the item's image, referenced
by `item`, plus a text made of the product phrase of the item's title and campaign copy in one of four styles), and a
target audience (a set of top categories and a price-bucket range).

Hidden ground-truth click model (never shown to the CTR models; they only see `serving.ads.features`):

    logit = quality_c + 0.15 * log(popularity_item)
            + coef_c[0] * taste_u . latent_item          (how well the item fits the user's taste)
            + coef_c[1] * [leaf of the user's last event == leaf of the item]   (current intent)
            + coef_c[2] * audience_match(u, c)           (favourite top category in the audience, price range)
            + coef_c[3] * (exp(-|log price_item - user's usual log price|) - 0.5)   (price fit)

`coef_c` depends on the creative: the product's top category follows one of four response archetypes
(price-, taste-, intent- or audience-driven, perturbed per category), the copy style amplifies one
component (discount copy -> price fit, "new arrival" -> intent, ...), plus small per-campaign noise; the
quality (intercept) depends on category and style too. So campaigns with similar creatives (same kind of
product in the image and text, same kind of copy) respond alike: that is what makes weights transferable
from similar warm campaigns to a cold one, and what a single median model misses.

Logs: every campaign gets `train` impressions (the warm LR is fitted on them; for cold campaigns they exist
only so the LR-warm upper bound can be measured), `calib` impressions (held out: fit calibrators) and
`test` impressions (held out: report metrics). Half of each campaign's impressions go to its audience.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from data.simulator import World

STYLES = ("discount", "premium", "new_arrival", "bestseller")
# Per style: response to (taste fit, current intent, audience match, price fit).
# Response archetypes over (taste fit, current intent, audience match, price fit): price-driven,
# taste-driven, intent-driven, audience-driven. Each top category follows one archetype.
_ARCHETYPES = np.array([[0.8, 0.5, 0.3, 3.0],
                        [3.0, 0.3, 0.8, 0.0],
                        [0.8, 2.8, 0.3, 0.3],
                        [1.2, 0.6, 2.5, 0.3]])
# The copy style amplifies one component: discount -> price fit, premium -> taste, new arrival -> intent,
# bestseller -> audience.
_STYLE_BOOST = np.array([[1.0, 1.0, 1.0, 1.5],
                         [1.5, 1.0, 1.0, 1.0],
                         [1.0, 1.5, 1.0, 1.0],
                         [1.0, 1.0, 1.5, 1.0]])
_STYLE_QUALITY = np.array([0.15, -0.2, 0.0, 0.2])
# Creative copy: the ad's own words around the product phrase (the item title without brand and price).
_COPY = {
    "discount": ("Huge sale: {pct}% off {product}. Limited-time discount, lowest price of the season!",
                 "Save {pct}% today on {product}. Clearance deal, cheaper than ever, while stocks last.",
                 "Bargain alert: {product} now {pct}% off. Discount code inside, don't miss the sale."),
    "premium": ("Luxury craftsmanship: {product}. Premium materials, timeless elegance, made to last.",
                "The exclusive {product}. Refined, high-end quality for those who want the very best.",
                "Indulge in {product}: designer quality, superior finish, an investment piece."),
    "new_arrival": ("Just launched: {product}. New arrival for the new season, be the first to get it.",
                    "New in: {product}. Fresh drop from the latest collection, available now.",
                    "Brand new {product} just landed. Discover this season's newest arrival today."),
    "bestseller": ("Bestseller: {product}. Loved by thousands of customers, rated 5 stars.",
                   "Top rated {product}. Our most popular pick, everyone is buying it.",
                   "Customer favourite {product}: best-selling, thousands of five-star reviews."),
}
SPLITS = ("train", "calib", "test")
TRAIN, CALIB, TEST = 0, 1, 2


class SplitCampaignLogs:
    """Warm/cold campaigns and split impression logs: what a class with `warm` [C], `log_split` [N] and
    `log_campaign` [N] offers (the simulator's CampaignSet, a dataset's models.ads.logs.AdLogs)."""

    @property
    def warm_ids(self) -> np.ndarray:
        return np.flatnonzero(self.warm)

    @property
    def cold_ids(self) -> np.ndarray:
        return np.flatnonzero(~self.warm)

    def logs(self, split: int, campaigns: np.ndarray | None = None) -> np.ndarray:
        """Row indices of the impressions of one split, optionally only for the given campaigns."""
        sel = self.log_split == split
        if campaigns is not None:
            sel &= np.isin(self.log_campaign, campaigns)
        return np.flatnonzero(sel)


@dataclasses.dataclass
class CampaignSet(SplitCampaignLogs):
    """Column arrays indexed by campaign id 0..C-1, plus the impression logs."""

    item: np.ndarray  # int64 [C] promoted item; its image is the creative image
    style: np.ndarray  # int64 [C] index into STYLES (part of the creative copy)
    text: list[str]  # creative text
    audience_top: np.ndarray  # bool [C, num_top_categories]
    audience_price: np.ndarray  # bool [C, num_price_buckets]
    warm: np.ndarray  # bool [C]: True = has training logs in production; False = cold start
    # Hidden ground truth (evaluation only).
    true_coef: np.ndarray  # float64 [C, 4]
    true_quality: np.ndarray  # float64 [C]
    # Impression logs, one row per impression.
    log_user: np.ndarray  # int64 [N]
    log_time: np.ndarray  # int64 [N]; the user's history strictly before this time is the request's
    log_campaign: np.ndarray  # int64 [N]
    log_click: np.ndarray  # int64 [N]
    log_true_ctr: np.ndarray  # float64 [N]
    log_split: np.ndarray  # int64 [N]: TRAIN, CALIB or TEST

    @property
    def num_campaigns(self) -> int:
        return len(self.item)



def _product_phrase(title: str) -> str:
    """The item title without its brand code and price ("brand012 slim tops t-shirt fit $21.50" -> "slim tops
    t-shirt fit"): an ad names the product, not the SKU."""
    return re.sub(r"\s*\$[0-9.,]+\s*$", "", re.sub(r"^brand\d+\s+", "", title)).strip()


def _user_segments(world: World) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hidden per-user traits from the full event log: favourite top category, usual price bucket and
    usual log price."""
    cat, cfg = world.catalog, world.config
    u, items = world.event_user, world.event_item
    counts = np.zeros((cfg.num_users, cfg.num_top_categories))
    np.add.at(counts, (u, cat.top_category[items]), 1.0)
    n = np.bincount(u, minlength=cfg.num_users).astype(np.float64)
    log_price = np.bincount(u, weights=np.log(cat.price[items]), minlength=cfg.num_users) / np.maximum(n, 1)
    buckets = np.zeros((cfg.num_users, cfg.num_price_buckets))
    np.add.at(buckets, (u, cat.price_bucket[items]), 1.0)
    return counts.argmax(1), buckets.argmax(1), log_price


def true_campaign_ctr(world: World, cs_item: np.ndarray, coef: np.ndarray, quality: np.ndarray,
                      audience_top: np.ndarray, audience_price: np.ndarray, users: np.ndarray,
                      times: np.ndarray, campaigns: np.ndarray) -> np.ndarray:
    """The hidden model above, for impressions (users[i], times[i], campaigns[i])."""
    cat = world.catalog
    fav_top, fav_bucket, usual_log_price = _user_segments(world)
    items = cs_item[campaigns]
    # Leaf of the user's last event before `time` (the current intent).
    ev_key = world.event_user * (world.event_timestamp.max() + 1) + world.event_timestamp
    pos = np.searchsorted(ev_key, users * (world.event_timestamp.max() + 1) + times, side="left") - 1
    last_leaf = cat.leaf_category[world.event_item[pos]]
    affinity = np.einsum("nd,nd->n", world.user_taste[users], cat.latent[items])
    intent = (last_leaf == cat.leaf_category[items]).astype(np.float64)
    aud = audience_top[campaigns, fav_top[users]] * np.where(audience_price[campaigns, fav_bucket[users]], 1.0, 0.5)
    price_fit = np.exp(-np.abs(np.log(cat.price[items]) - usual_log_price[users])) - 0.5
    c = coef[campaigns]
    logit = (quality[campaigns] + 0.15 * np.log(cat.popularity[items]) + c[:, 0] * affinity + c[:, 1] * intent
             + c[:, 2] * aud + c[:, 3] * price_fit)
    return 1.0 / (1.0 + np.exp(-logit))


def build_campaigns(world: World, seed: int = 0, warm_fraction: float = 0.7,
                    impressions: tuple[int, int, int] = (1200, 400, 500)) -> CampaignSet:
    """Campaigns for every `world.campaign_item`, a warm/cold split and (train, calib, test) impressions per
    campaign. Deterministic in (world, seed)."""
    if not 0.0 < warm_fraction < 1.0:
        raise ValueError(f"warm_fraction must be in (0, 1), got {warm_fraction}")
    if len(impressions) != 3 or min(impressions) < 1:
        raise ValueError(f"impressions must be 3 positive counts (train, calib, test), got {impressions}")
    rng = np.random.default_rng([seed, 7919])
    cat, cfg = world.catalog, world.config
    items = world.campaign_item.astype(np.int64)
    n_c = len(items)
    top = cat.top_category[items]

    style = rng.integers(0, len(STYLES), size=n_c)
    archetype = rng.integers(0, len(_ARCHETYPES), size=cfg.num_top_categories)
    category_coef = _ARCHETYPES[archetype] * (1.0 + 0.25 * rng.normal(size=(cfg.num_top_categories, 4)))
    coef = category_coef[top] * _STYLE_BOOST[style] + 0.1 * rng.normal(size=(n_c, 4))
    # Creative quality: mostly explained by the copy style and the category, partly idiosyncratic.
    category_quality = 0.4 * rng.normal(size=cfg.num_top_categories)
    quality = -2.6 + _STYLE_QUALITY[style] + category_quality[top] + 0.1 * rng.normal(size=n_c)

    audience_top = np.zeros((n_c, cfg.num_top_categories), bool)
    audience_top[np.arange(n_c), top] = True
    extra = rng.random(n_c) < 0.5  # half the campaigns also target one other category
    audience_top[np.flatnonzero(extra), rng.integers(0, cfg.num_top_categories, size=int(extra.sum()))] = True
    bucket = cat.price_bucket[items]
    audience_price = np.abs(np.arange(cfg.num_price_buckets)[None, :] - bucket[:, None]) <= 1

    text = []
    for c in range(n_c):
        name = STYLES[style[c]]
        template = _COPY[name][rng.integers(len(_COPY[name]))]
        text.append(template.format(product=_product_phrase(cat.titles[items[c]]),
                                    pct=int(rng.choice([10, 20, 30, 40, 50]))))

    order = rng.permutation(n_c)
    warm = np.zeros(n_c, bool)
    warm[order[: int(round(warm_fraction * n_c))]] = True

    # Impressions: per campaign, half to users in its audience (ads are targeted), half to anyone.
    fav_top, _, _ = _user_segments(world)
    n_per = int(sum(impressions))
    log_campaign = np.repeat(np.arange(n_c), n_per)
    log_split = np.tile(np.repeat(np.arange(3), impressions), n_c)
    targeted = rng.random(len(log_campaign)) < 0.5
    users_by_top = [np.flatnonzero(fav_top == t) for t in range(cfg.num_top_categories)]
    log_user = rng.integers(0, cfg.num_users, size=len(log_campaign))
    for c in range(n_c):  # per campaign, not per impression: choose audience users in one call
        pool = np.concatenate([users_by_top[t] for t in np.flatnonzero(audience_top[c])])
        rows = np.flatnonzero(targeted & (log_campaign == c))
        if len(pool) and len(rows):
            log_user[rows] = rng.choice(pool, size=len(rows))
    # A random point on the user's timeline, just after one of their events (so history is never empty).
    bounds = np.searchsorted(world.event_user, np.arange(cfg.num_users + 1))
    lo, hi = bounds[log_user], bounds[log_user + 1]
    pos = lo + (rng.random(len(log_user)) * (hi - lo)).astype(np.int64)  # index of the last visible event
    log_time = world.event_timestamp[pos] + 1

    ctr = true_campaign_ctr(world, items, coef, quality, audience_top, audience_price, log_user, log_time,
                            log_campaign)
    click = (rng.random(len(ctr)) < ctr).astype(np.int64)
    return CampaignSet(item=items, style=style.astype(np.int64), text=text, audience_top=audience_top,
                       audience_price=audience_price, warm=warm, true_coef=coef, true_quality=quality,
                       log_user=log_user.astype(np.int64), log_time=log_time.astype(np.int64),
                       log_campaign=log_campaign.astype(np.int64), log_click=click, log_true_ctr=ctr,
                       log_split=log_split.astype(np.int64))
