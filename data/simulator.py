"""Deterministic e-commerce world simulator.

One seed fixes everything: a catalog (two-level category tree, brands, prices, titles), users with latent
tastes, multi-behaviour shopping journeys (one intent each), and ad impressions with clicks drawn from a
hidden ground-truth CTR model. Item id 0 is reserved for padding, so real items are 1..num_items.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from data.dataset import CATEGORY_SEPARATOR, staged_dataset_dir, write_dataset_json, write_parquet

# Behaviour codes shared with the serving protocol (0 is padding).
VIEW, ADD_TO_CART, REMOVE_FROM_CART, PURCHASE = 1, 2, 3, 4
BEHAVIOR_NAMES = {VIEW: "view", ADD_TO_CART: "add_to_cart", REMOVE_FROM_CART: "remove_from_cart",
                  PURCHASE: "purchase"}
NUM_BEHAVIORS = 5  # including padding

# A fashion store: every leaf names a garment that maps to a Fashion-MNIST class (data/creatives.py), so
# each item can be shown with a real image of its class. List lengths fix the random draws: keep them.
_TOP_CATEGORIES = ["tops", "knitwear", "bottoms", "dresses", "outerwear", "sneakers", "sandals and boots", "bags",
                   "shirts", "tees", "boots", "sandals"]
_LEAF_CATEGORIES = [
    ["t-shirt", "tank top", "shirt", "blouse"],
    ["pullover", "sweater", "hoodie", "sweatshirt"],
    ["trouser", "jeans", "chino trouser", "jogger"],
    ["dress", "maxi dress", "midi dress", "wrap dress"],
    ["coat", "jacket", "parka", "trench coat"],
    ["sneaker", "running shoe", "canvas sneaker", "trainer"],
    ["sandal", "slide sandal", "ankle boot", "chelsea boot"],
    ["bag", "handbag", "backpack", "tote bag"],
    ["oxford shirt", "flannel shirt", "polo shirt", "linen shirt"],
    ["graphic t-shirt", "crop top", "long-sleeve top", "v-neck t-shirt"],
    ["ankle boot", "combat boot", "lace-up boot", "heeled ankle boot"],
    ["sandal", "strappy sandal", "flip-flop", "platform sandal"],
]
_ADJECTIVES = ["classic", "slim", "premium", "organic", "relaxed", "soft", "sport", "vintage", "casual", "light"]
_NOUNS = ["edition", "style", "pack", "fit", "series", "cut", "line", "collection"]


@dataclasses.dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    num_top_categories: int = 8
    subcategories_per_top: int = 4
    num_brands: int = 40
    num_price_buckets: int = 5
    num_items: int = 1500
    num_users: int = 1500
    latent_dim: int = 16
    journeys_per_user: tuple[int, int] = (4, 9)
    views_per_journey: tuple[int, int] = (2, 8)
    num_campaigns: int = 200
    impressions_per_user: int = 24  # organic recommendation exposures (train the ranker)
    ad_impressions_per_user: int = 8  # campaign exposures (the ads/cold-start work)

    @property
    def num_leaf_categories(self) -> int:
        return self.num_top_categories * self.subcategories_per_top


@dataclasses.dataclass
class Catalog:
    """Column arrays indexed by item id (row 0 is the padding item)."""

    top_category: np.ndarray  # int64 [N+1]
    leaf_category: np.ndarray  # int64 [N+1], global leaf id
    brand: np.ndarray  # int64 [N+1]
    price: np.ndarray  # float32 [N+1]
    price_bucket: np.ndarray  # int64 [N+1]
    latent: np.ndarray  # float32 [N+1, D], hidden from models
    popularity: np.ndarray  # float32 [N+1]
    titles: list[str]

    @property
    def num_items(self) -> int:
        return len(self.top_category) - 1


@dataclasses.dataclass
class World:
    config: SimConfig
    catalog: Catalog
    user_taste: np.ndarray  # float32 [U, D]
    # Events, sorted by (user, timestamp): one row per interaction.
    event_user: np.ndarray
    event_item: np.ndarray
    event_behavior: np.ndarray
    event_timestamp: np.ndarray
    event_journey: np.ndarray  # global journey id
    # Organic exposures of items with clicks: (user, time, item, click).
    impression_user: np.ndarray
    impression_time: np.ndarray
    impression_item: np.ndarray
    impression_click: np.ndarray
    impression_true_ctr: np.ndarray
    # Campaigns promote one item each; ad impressions are (user, time, campaign, click).
    campaign_item: np.ndarray
    ad_user: np.ndarray
    ad_time: np.ndarray
    ad_campaign: np.ndarray
    ad_click: np.ndarray

    def user_history(self, user: int, before: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, behaviors, timestamps) of one user, optionally only events strictly before `before`."""
        lo, hi = np.searchsorted(self.event_user, [user, user + 1])
        ts = self.event_timestamp[lo:hi]
        if before is not None:
            hi = lo + int(np.searchsorted(ts, before, side="left"))
        return self.event_item[lo:hi], self.event_behavior[lo:hi], self.event_timestamp[lo:hi]


def _make_catalog(cfg: SimConfig, rng: np.random.Generator) -> Catalog:
    n, d = cfg.num_items, cfg.latent_dim
    top_centres = rng.normal(size=(cfg.num_top_categories, d))
    leaf_centres = (top_centres.repeat(cfg.subcategories_per_top, axis=0)
                    + 0.6 * rng.normal(size=(cfg.num_leaf_categories, d)))
    brand_vectors = 0.5 * rng.normal(size=(cfg.num_brands, d))
    # Brands specialise in a couple of top categories, like real ones.
    brand_home = rng.integers(0, cfg.num_top_categories, size=cfg.num_brands)

    leaf = rng.integers(0, cfg.num_leaf_categories, size=n)
    top = leaf // cfg.subcategories_per_top
    brand = np.where(rng.random(n) < 0.7,
                     _pick_brand_in_category(top, brand_home, rng),
                     rng.integers(0, cfg.num_brands, size=n))
    latent = leaf_centres[leaf] + brand_vectors[brand] + 0.4 * rng.normal(size=(n, d))
    latent /= np.linalg.norm(latent, axis=1, keepdims=True)
    price = np.exp(rng.normal(3.0 + 0.15 * top, 0.8)).astype(np.float32)
    edges = np.quantile(price, np.linspace(0, 1, cfg.num_price_buckets + 1)[1:-1])
    price_bucket = np.searchsorted(edges, price)
    popularity = rng.pareto(1.5, size=n) + 1.0

    names = [_TOP_CATEGORIES[t % len(_TOP_CATEGORIES)] for t in range(cfg.num_top_categories)]
    titles = [""] + [
        f"brand{b:03d} {_ADJECTIVES[rng.integers(len(_ADJECTIVES))]} {names[t]} "
        f"{leaf_name(cfg, lf)} {_NOUNS[rng.integers(len(_NOUNS))]} ${p:.2f}"
        for t, lf, b, p in zip(top, leaf, brand, price)
    ]

    def pad(a, dtype):
        return np.concatenate([np.zeros((1,) + a.shape[1:], dtype=dtype), a.astype(dtype)])

    return Catalog(top_category=pad(top, np.int64), leaf_category=pad(leaf, np.int64),
                   brand=pad(brand, np.int64), price=pad(price, np.float32),
                   price_bucket=pad(price_bucket, np.int64), latent=pad(latent, np.float32),
                   popularity=pad(popularity, np.float32), titles=titles)


def leaf_name(cfg: SimConfig, leaf: int) -> str:
    """Display name of a global leaf category id (names repeat when a config asks for more than exist)."""
    top, sub = divmod(int(leaf), cfg.subcategories_per_top)
    names = _LEAF_CATEGORIES[top % len(_LEAF_CATEGORIES)]
    return names[sub % len(names)]


def _pick_brand_in_category(top: np.ndarray, brand_home: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(top)
    for i, t in enumerate(top):
        candidates = np.flatnonzero(brand_home == t)
        out[i] = rng.choice(candidates) if len(candidates) else rng.integers(len(brand_home))
    return out


def _softmax_sample(scores: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    p = np.exp(scores - scores.max())
    p /= p.sum()
    return rng.choice(len(scores), size=size, p=p)


def true_ctr(world_or_catalog, user_taste: np.ndarray, items: np.ndarray, recent_leaf: np.ndarray) -> np.ndarray:
    """Hidden ground-truth click model: taste match, plus a boost when the ad matches the current intent."""
    cat = world_or_catalog.catalog if isinstance(world_or_catalog, World) else world_or_catalog
    affinity = np.einsum("nd,nd->n", user_taste, cat.latent[items])
    intent = (cat.leaf_category[items] == recent_leaf).astype(np.float32)
    logit = -3.2 + 2.2 * affinity + 1.3 * intent + 0.15 * np.log(cat.popularity[items])
    return 1.0 / (1.0 + np.exp(-logit))


def simulate(cfg: SimConfig = SimConfig()) -> World:
    rng = np.random.default_rng(cfg.seed)
    cat = _make_catalog(cfg, rng)
    n_items = cat.num_items
    items_by_leaf = [np.flatnonzero(cat.leaf_category[1:] == lf) + 1 for lf in range(cfg.num_leaf_categories)]
    leaf_latent = np.stack([cat.latent[ids].mean(0) if len(ids) else np.zeros(cfg.latent_dim)
                            for ids in items_by_leaf])

    taste = rng.normal(size=(cfg.num_users, cfg.latent_dim)).astype(np.float32)
    taste /= np.linalg.norm(taste, axis=1, keepdims=True)

    ev_user, ev_item, ev_beh, ev_ts, ev_journey = [], [], [], [], []
    journey_id = 0
    t0 = 1_700_000_000
    for u in range(cfg.num_users):
        t = t0 + int(rng.integers(0, 86_400 * 30))
        n_journeys = int(rng.integers(*cfg.journeys_per_user, endpoint=True))
        # Intents only among leaves that have items, so every user has events.
        leaf_scores = np.where([len(ids) > 0 for ids in items_by_leaf], 3.0 * leaf_latent @ taste[u], -np.inf)
        for _ in range(n_journeys):
            leaf = int(_softmax_sample(leaf_scores, rng, 1)[0])
            pool = items_by_leaf[leaf]
            if len(pool) == 0:
                continue
            # Within the intent, users prefer items that match their taste and popular ones.
            item_scores = 4.0 * cat.latent[pool] @ taste[u] + 0.5 * np.log(cat.popularity[pool])
            n_views = int(rng.integers(*cfg.views_per_journey, endpoint=True))
            viewed = pool[_softmax_sample(item_scores, rng, n_views)]
            steps: list[tuple[int, int]] = [(int(i), VIEW) for i in viewed]
            best = int(viewed[np.argmax(cat.latent[viewed] @ taste[u])])
            if rng.random() < 0.55:
                steps.append((best, ADD_TO_CART))
                if rng.random() < 0.2:
                    steps.append((best, REMOVE_FROM_CART))  # abandoned after carting
                elif rng.random() < 0.75:
                    steps.append((best, PURCHASE))
            for item, beh in steps:
                t += int(rng.integers(5, 300))
                ev_user.append(u), ev_item.append(item), ev_beh.append(beh), ev_ts.append(t)
                ev_journey.append(journey_id)
            journey_id += 1
            t += int(rng.integers(3_600, 86_400 * 3))  # a gap separates journeys

    ev_user_a = np.asarray(ev_user, np.int64)
    ev_item_a = np.asarray(ev_item, np.int64)
    ev_beh_a = np.asarray(ev_beh, np.int64)
    ev_ts_a = np.asarray(ev_ts, np.int64)
    ev_j_a = np.asarray(ev_journey, np.int64)

    bounds = np.searchsorted(ev_user_a, np.arange(cfg.num_users + 1))

    def exposures(per_user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random points on each user's timeline: (user, time just after an event, leaf of that event)."""
        users = np.repeat(np.arange(cfg.num_users), per_user)
        times = np.empty(len(users), np.int64)
        leaves = np.empty(len(users), np.int64)
        for j, u in enumerate(users):
            lo, hi = bounds[u], bounds[u + 1]
            pos = int(rng.integers(lo + 1, hi + 1))
            times[j] = ev_ts_a[pos - 1] + 1
            leaves[j] = cat.leaf_category[ev_item_a[pos - 1]]
        return users, times, leaves

    # Organic exposures: half from the current intent's category (as a recommender would show), half by
    # popularity, so the click log covers the whole catalog.
    imp_user, imp_time, imp_leaf = exposures(cfg.impressions_per_user)
    popular = rng.choice(np.arange(1, n_items + 1), size=len(imp_user), p=cat.popularity[1:] / cat.popularity[1:].sum())
    in_intent = np.array([rng.choice(items_by_leaf[lf]) for lf in imp_leaf])
    imp_item = np.where(rng.random(len(imp_user)) < 0.5, in_intent, popular).astype(np.int64)
    imp_ctr = true_ctr(cat, taste[imp_user], imp_item, imp_leaf)
    imp_click = (rng.random(len(imp_ctr)) < imp_ctr).astype(np.int64)

    campaign_item = rng.choice(np.arange(1, n_items + 1), size=min(cfg.num_campaigns, n_items), replace=False,
                               p=cat.popularity[1:] / cat.popularity[1:].sum()).astype(np.int64)
    ad_user, ad_time, ad_leaf = exposures(cfg.ad_impressions_per_user)
    ad_campaign = rng.integers(0, len(campaign_item), size=len(ad_user))
    ad_ctr = true_ctr(cat, taste[ad_user], campaign_item[ad_campaign], ad_leaf)
    ad_click = (rng.random(len(ad_ctr)) < ad_ctr).astype(np.int64)

    return World(config=cfg, catalog=cat, user_taste=taste, event_user=ev_user_a, event_item=ev_item_a,
                 event_behavior=ev_beh_a, event_timestamp=ev_ts_a, event_journey=ev_j_a,
                 impression_user=imp_user.astype(np.int64), impression_time=imp_time, impression_item=imp_item,
                 impression_click=imp_click, impression_true_ctr=imp_ctr.astype(np.float32),
                 campaign_item=campaign_item, ad_user=ad_user.astype(np.int64), ad_time=ad_time,
                 ad_campaign=ad_campaign.astype(np.int64), ad_click=ad_click)


def summary(world: World) -> dict:
    beh = np.bincount(world.event_behavior, minlength=NUM_BEHAVIORS)
    return {
        "items": world.catalog.num_items,
        "users": world.config.num_users,
        "events": int(len(world.event_item)),
        "journeys": int(world.event_journey.max() + 1),
        "behaviors": {BEHAVIOR_NAMES[b]: int(beh[b]) for b in BEHAVIOR_NAMES},
        "impressions": int(len(world.impression_click)),
        "ctr": float(world.impression_click.mean()),
        "ad_impressions": int(len(world.ad_click)),
        "ad_ctr": float(world.ad_click.mean()),
    }


# The dataset contract (docs/dataset.md): behaviour code = 1 + index in this vocabulary.
DATASET_EVENTS = tuple(BEHAVIOR_NAMES[b] for b in sorted(BEHAVIOR_NAMES))
IMAGE_DIR = "images"
COLD_LAUNCH_QUANTILE = 0.85


def top_name(cfg: SimConfig, top: int) -> str:
    """Display name of a top category id (the name the titles use; names repeat past the list's length)."""
    return _TOP_CATEGORIES[int(top) % len(_TOP_CATEGORIES)]


def category_path(cfg: SimConfig, leaf: int) -> str:
    """The category path ("top > leaf") of a global leaf category id, as written to items.parquet."""
    return f"{top_name(cfg, int(leaf) // cfg.subcategories_per_top)}{CATEGORY_SEPARATOR}{leaf_name(cfg, leaf)}"


def write_dataset(world: World, out_dir: str | Path, seed: int = 0, *, fashion_mnist_root=None,
                  train_images: tuple[np.ndarray, np.ndarray] | None = None,
                  campaign_impressions: tuple[int, int, int] = (1200, 400, 500),
                  overwrite: bool = False) -> dict:
    """Write `world` as the dataset contract (docs/dataset.md) into `out_dir`; returns the row counts.

    items.parquet (item_id 1..N, title, category "top > leaf", brand "brandNNN", price, image), images/<id>.png
    (each item's Fashion-MNIST TRAIN image, data/creatives.catalog_images(seed=seed)), events.parquet
    (behaviour codes as the default names), impressions.parquet (organic exposures, clicked), campaigns.parquet
    (data/campaigns.build_campaigns(world, seed): ad copy, promoted item and its image, targeting: top
    categories and the price range of the targeted price buckets), ad_impressions.parquet (that campaign log;
    cold-start campaigns only after its 85% time point),
    dataset.json and summary.json. `train_images` replaces the Fashion-MNIST train split (tests)."""
    import pyarrow as pa
    from PIL import Image

    from data.campaigns import build_campaigns
    from data.creatives import catalog_images

    cfg, cat = world.config, world.catalog
    n = cat.num_items
    ids = np.arange(1, n + 1, dtype=np.int64)
    images = catalog_images(cat, cfg, seed=seed, root=fashion_mnist_root, train=train_images).item_images
    cs = build_campaigns(world, seed=seed, impressions=campaign_impressions)
    image_path = [f"{IMAGE_DIR}/{i}.png" for i in ids.tolist()]

    # Targeted price range: from the cheapest item of the lowest targeted bucket to the dearest of the highest.
    bucket_lo = np.array([cat.price[1:][cat.price_bucket[1:] == b].min(initial=np.inf)
                          for b in range(cfg.num_price_buckets)], np.float64)
    bucket_hi = np.array([cat.price[1:][cat.price_bucket[1:] == b].max(initial=-np.inf)
                          for b in range(cfg.num_price_buckets)], np.float64)
    price_min = [float(bucket_lo[row].min()) for row in cs.audience_price]
    price_max = [float(bucket_hi[row].max()) for row in cs.audience_price]

    counts: dict = {}
    with staged_dataset_dir(Path(out_dir), overwrite) as d:
        (d / IMAGE_DIR).mkdir()
        for i, path in zip(ids.tolist(), image_path):
            Image.fromarray(images[i], mode="L").save(d / path, format="PNG")
        counts["images"] = n
        counts["items"] = write_parquet(d / "items.parquet", {
            "item_id": ids,
            "title": list(cat.titles[1:]),
            "category": [category_path(cfg, lf) for lf in cat.leaf_category[1:].tolist()],
            "brand": [f"brand{b:03d}" for b in cat.brand[1:].tolist()],
            "price": cat.price[1:].astype(np.float64),
            "image": image_path,
        }, pa.schema([("item_id", pa.int64()), ("title", pa.string()), ("category", pa.string()),
                      ("brand", pa.string()), ("price", pa.float64()), ("image", pa.string())]))
        counts["events"] = write_parquet(d / "events.parquet", {
            "user_id": world.event_user.astype(np.int64),
            "item_id": world.event_item.astype(np.int64),
            "event": [BEHAVIOR_NAMES[b] for b in world.event_behavior.tolist()],
            "timestamp": world.event_timestamp.astype(np.int64),
        }, pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("event", pa.string()),
                      ("timestamp", pa.int64())]))
        counts["impressions"] = write_parquet(d / "impressions.parquet", {
            "user_id": world.impression_user.astype(np.int64),
            "item_id": world.impression_item.astype(np.int64),
            "timestamp": world.impression_time.astype(np.int64),
            "clicked": world.impression_click.astype(bool),
        }, pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64()),
                      ("clicked", pa.bool_())]))
        counts["campaigns"] = write_parquet(d / "campaigns.parquet", {
            "campaign_id": np.arange(cs.num_campaigns, dtype=np.int64),
            "title": list(cs.text),
            "image": [image_path[i - 1] for i in cs.item.tolist()],
            "item_id": cs.item.astype(np.int64),
            "target_categories": [[top_name(cfg, t) for t in np.flatnonzero(row).tolist()]
                                  for row in cs.audience_top],
            "target_price_min": price_min,
            "target_price_max": price_max,
        }, pa.schema([("campaign_id", pa.int64()), ("title", pa.string()), ("image", pa.string()),
                      ("item_id", pa.int64()), ("target_categories", pa.list_(pa.string())),
                      ("target_price_min", pa.float64()), ("target_price_max", pa.float64())]))
        # Cold-start campaigns launch late: only their impressions after the 85% point of the log's time exist,
        # so a time split of the log (models.ads.logs) sees no training impressions of theirs.
        logged = cs.warm[cs.log_campaign] | (cs.log_time > np.quantile(cs.log_time, COLD_LAUNCH_QUANTILE))
        counts["ad_impressions"] = write_parquet(d / "ad_impressions.parquet", {
            "user_id": cs.log_user[logged].astype(np.int64),
            "campaign_id": cs.log_campaign[logged].astype(np.int64),
            "timestamp": cs.log_time[logged].astype(np.int64),
            "clicked": cs.log_click[logged].astype(bool),
        }, pa.schema([("user_id", pa.int64()), ("campaign_id", pa.int64()), ("timestamp", pa.int64()),
                      ("clicked", pa.bool_())]))
        write_dataset_json(d / "dataset.json", f"simulator-seed{seed}", DATASET_EVENTS, "purchase")
        (d / "summary.json").write_text(json.dumps(summary(world), indent=2) + "\n")
    counts["users"] = int(len(np.unique(world.event_user)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description="Simulate a world: print its summary and optionally write it as "
                                                 "a dataset (docs/dataset.md).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-items", type=int, default=SimConfig.num_items)
    parser.add_argument("--num-users", type=int, default=SimConfig.num_users)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write the world as a dataset directory (Parquet files, images, dataset.json, "
                             "summary.json); DIR must be absent or empty")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --out: replace DIR when it holds a dataset written before")
    parser.add_argument("--summary", type=Path, metavar="FILE", help="write the summary as JSON here")
    args = parser.parse_args()
    world = simulate(SimConfig(seed=args.seed, num_items=args.num_items, num_users=args.num_users))
    text = json.dumps(summary(world), indent=2)
    print(text)
    if args.summary:
        args.summary.write_text(text)
    if args.out:
        try:
            counts = write_dataset(world, args.out, seed=args.seed, overwrite=args.overwrite)
        except (FileExistsError, NotADirectoryError) as e:
            parser.error(str(e))
        print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
