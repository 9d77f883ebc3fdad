"""A validated dataset (data.dataset) encoded for training: dense internal ids and column arrays.

Every build stage reads this, whatever produced the dataset (the simulator, MovieLens, a shop's own files).
Internal item ids are 1..N in the order of the dataset's own ids (row 0 of every item column is the padding
item); `item_ids[i]` is the dataset's id of internal item i, and the served API maps between the two at its
edge. Users are 0..U-1 in the sorted order of their ids (the union of every table's users). Campaigns are
0..C-1 in the order of their ids.

numpy/pandas only (no torch): the serving side and the validator may import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from data.dataset import CATEGORY_SEPARATOR, Dataset, DatasetMeta, load_dataset

PRICE_BUCKETS = 8  # quantile buckets of a dataset's prices (items without a price get bucket 0)


@dataclasses.dataclass
class ItemTable:
    """Column arrays indexed by internal item id (row 0 = padding)."""

    item_ids: np.ndarray  # int64 [N+1] the dataset's item id of each internal id; row 0 = 0 (unused)
    titles: list[str]  # [N+1]
    texts: list[str]  # [N+1] title, category path and brand: what content embeddings read
    category_paths: list[str]  # [N+1] "coarse > ... > fine"
    top_category: np.ndarray  # int64 [N+1] index into top_names
    top_names: list[str]  # sorted distinct top-level category names
    leaf_category: np.ndarray  # int64 [N+1] index into leaf_names (the whole path: "a > x" != "b > x")
    leaf_names: list[str]
    brand: np.ndarray  # int64 [N+1] index into brand_names; 0 = no brand
    brand_names: list[str]  # [0] = "" (no brand)
    price: np.ndarray  # float64 [N+1], NaN = unknown
    price_bucket: np.ndarray  # int64 [N+1] 0 = unknown, 1..num_price_buckets-1 = quantile buckets
    price_edges: np.ndarray  # float64: bucket b (>= 1) holds prices in [edges[b-2], edges[b-1])
    images: list[Path | None]  # [N+1] absolute image path or None (text-only content)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def num_top_categories(self) -> int:
        return len(self.top_names)

    @property
    def num_leaf_categories(self) -> int:
        return len(self.leaf_names)

    @property
    def num_brands(self) -> int:
        return len(self.brand_names)

    @property
    def num_price_buckets(self) -> int:
        return len(self.price_edges) + 2  # unknown + one more bucket than edges

    def category_levels(self) -> list[list[str]]:
        """Per internal item (row 0 = []), its category path's levels as whole prefixes, coarse -> fine."""
        out = [[]]
        for path in self.category_paths[1:]:
            parts = path.split(CATEGORY_SEPARATOR)
            out.append([CATEGORY_SEPARATOR.join(parts[:i + 1]) for i in range(len(parts))])
        return out


@dataclasses.dataclass
class Campaigns:
    """Campaign columns indexed by internal campaign id 0..C-1, and the ad impression log."""

    campaign_ids: np.ndarray  # int64 [C] the dataset's id of each internal campaign
    text: list[str]  # ad copy
    item: np.ndarray  # int64 [C] promoted internal item id, 0 = none
    images: list[Path | None]  # [C] the creative image (its own, else its promoted item's), or None
    audience_top: np.ndarray  # bool [C, num_top_categories]: targeted top categories (all when untargeted)
    audience_price: np.ndarray  # bool [C, num_price_buckets]: targeted price buckets (all when untargeted)
    log_user: np.ndarray  # int64 [M] internal user
    log_time: np.ndarray  # int64 [M]
    log_campaign: np.ndarray  # int64 [M] internal campaign
    log_click: np.ndarray  # int64 [M] 0/1

    @property
    def num_campaigns(self) -> int:
        return len(self.campaign_ids)


@dataclasses.dataclass
class BuildData:
    """What the build trains on. Events are sorted by (user, timestamp), file order breaking ties."""

    name: str
    meta: DatasetMeta
    catalog: ItemTable
    user_ids: np.ndarray  # object [U] the dataset's user id (as text) of each internal user
    event_user: np.ndarray  # int64 [E]
    event_item: np.ndarray  # int64 [E] internal item id
    event_behavior: np.ndarray  # int64 [E] 1 + index in meta.events
    event_timestamp: np.ndarray  # int64 [E] unix seconds
    # Organic impressions (None when the dataset has none): the ranker's and the calibrator's labels.
    impression_user: np.ndarray | None = None
    impression_item: np.ndarray | None = None
    impression_time: np.ndarray | None = None
    impression_click: np.ndarray | None = None
    campaigns: Campaigns | None = None
    source: Path | None = None  # the dataset directory

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return self.catalog.num_items

    @property
    def num_behaviors(self) -> int:
        """Behaviour codes including padding (0)."""
        return self.meta.num_behaviors

    @property
    def has_impressions(self) -> bool:
        return self.impression_user is not None

    def user_bounds(self) -> np.ndarray:
        """int64 [U+1]: user u's events are rows bounds[u]:bounds[u+1]."""
        return np.searchsorted(self.event_user, np.arange(self.num_users + 1))

    def user_history(self, user: int, before: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, behaviours, timestamps) of one user, optionally only events strictly before `before`."""
        lo, hi = np.searchsorted(self.event_user, [user, user + 1])
        if before is not None:
            hi = lo + int(np.searchsorted(self.event_timestamp[lo:hi], before, side="left"))
        return self.event_item[lo:hi], self.event_behavior[lo:hi], self.event_timestamp[lo:hi]

    def histories_before(self, users: np.ndarray, times: np.ndarray, length: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Right-aligned [n, length] items, behaviours and timestamps of each (user, time): the user's newest
        `length` events strictly before the time (0 = padding)."""
        bounds = self.user_bounds()
        users, times = np.asarray(users, np.int64), np.asarray(times, np.int64)
        # One sorted key over (user, timestamp) finds every cut with one searchsorted.
        scale = int(max(self.event_timestamp.max(initial=0), times.max(initial=0))) + 2
        key = self.event_user * scale + self.event_timestamp
        end = np.searchsorted(key, users * scale + times, side="left")
        start = np.maximum(bounds[users], end - length)
        offsets = np.arange(length)[None, :] - length + end[:, None]  # [n, length] row index per slot
        valid = offsets >= start[:, None]
        idx = np.where(valid, offsets, 0)
        take = lambda col: np.where(valid, col[idx], 0).astype(np.int64)  # noqa: E731
        return take(self.event_item), take(self.event_behavior), take(self.event_timestamp)

    def item_popularity(self) -> np.ndarray:
        """int64 [N+1] events per internal item."""
        return np.bincount(self.event_item, minlength=self.num_items + 1)

    def internal_items(self, external: np.ndarray) -> np.ndarray:
        """Internal ids of dataset item ids (every id must be in the catalog)."""
        ids = self.catalog.item_ids[1:]
        pos = np.searchsorted(ids, external)
        if len(external) and (pos.max() >= len(ids) or np.any(ids[np.minimum(pos, len(ids) - 1)] != external)):
            raise KeyError("item id not in the catalog")
        return pos + 1

    def sequences(self):
        """The per-user view the sequential recommenders train on (data.sequences.SequenceDataset)."""
        from data.sequences import SequenceDataset

        cat = self.catalog
        levels = cat.category_levels()
        depth = max(len(lv) for lv in levels[1:])
        attributes = {}
        for level in range(depth):
            # Shorter paths repeat their last level: every item has a value at every depth.
            attributes[f"category_{level + 1}"] = _codes([lv[min(level, len(lv) - 1)] for lv in levels[1:]])
        if (cat.brand[1:] > 0).any():
            attributes["brand"] = cat.brand.copy()
        if (cat.price_bucket[1:] > 0).any():
            attributes["price_bucket"] = cat.price_bucket.copy()
        bounds = self.user_bounds()
        spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        return SequenceDataset(
            name=self.name, num_items=cat.num_items, item_attributes=attributes, item_texts=list(cat.texts),
            user_items=[self.event_item[a:b] for a, b in spans], user_behaviors=[self.event_behavior[a:b] for a, b in spans],
            user_timestamps=[self.event_timestamp[a:b].astype(np.float64) for a, b in spans],
            behavior_names=("pad",) + tuple(self.meta.events), external_item_ids=cat.item_ids.copy(),
            repeats=self.meta.repeats)


def _codes(values: list[str]) -> np.ndarray:
    """Row 0 (padding) then each value's 0-based code among the sorted distinct values."""
    vocabulary = {v: i for i, v in enumerate(sorted(set(values)))}
    return np.array([0] + [vocabulary[v] for v in values], np.int64)


def _index(values: list[str]) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(values))
    lookup = {v: i for i, v in enumerate(names)}
    return np.array([0] + [lookup[v] for v in values], np.int64), names


def _item_table(dataset: Dataset) -> ItemTable:
    items = dataset.items.sort_values("item_id", kind="stable").reset_index(drop=True)
    n = len(items)
    paths = [str(c) for c in items["category"]]
    top, top_names = _index([p.split(CATEGORY_SEPARATOR)[0] for p in paths])
    leaf, leaf_names = _index(paths)
    raw_brand = [b if isinstance(b, str) and b else "" for b in items["brand"]]
    brand_names = [""] + sorted(set(raw_brand) - {""})
    brand_lookup = {b: i for i, b in enumerate(brand_names)}
    brand = np.array([0] + [brand_lookup[b] for b in raw_brand], np.int64)
    price = np.concatenate([[np.nan], items["price"].to_numpy(np.float64)])
    known = ~np.isnan(price[1:])
    if known.any():
        edges = np.unique(np.quantile(price[1:][known], np.linspace(0, 1, PRICE_BUCKETS + 1)[1:-1]))
    else:
        edges = np.zeros(0)
    bucket = np.where(np.isnan(price), 0, np.searchsorted(edges, np.nan_to_num(price), "right") + 1).astype(np.int64)
    bucket[0] = 0
    titles = [""] + [str(t) for t in items["title"]]
    texts = [""] + [" ".join(part for part in (t, c, b) if part) for t, c, b in zip(titles[1:], paths, raw_brand)]
    images = [None] + [dataset.image_path(im) if isinstance(im, str) and im else None for im in items["image"]]
    return ItemTable(item_ids=np.concatenate([[0], items["item_id"].to_numpy(np.int64)]), titles=titles,
                     texts=texts, category_paths=[""] + paths, top_category=top, top_names=top_names,
                     leaf_category=leaf, leaf_names=leaf_names, brand=brand, brand_names=brand_names, price=price,
                     price_bucket=bucket, price_edges=edges, images=images)


def _campaigns(dataset: Dataset, catalog: ItemTable, user_code) -> Campaigns:
    cs = dataset.campaigns.sort_values("campaign_id", kind="stable").reset_index(drop=True)
    ids = cs["campaign_id"].to_numpy(np.int64)
    promoted = cs["item_id"]
    item = np.zeros(len(cs), np.int64)
    has_item = promoted.notna().to_numpy()
    if has_item.any():
        item[has_item] = np.searchsorted(catalog.item_ids[1:], promoted[has_item].to_numpy(np.int64)) + 1
    images = [dataset.image_path(im) if isinstance(im, str) and im else
              (catalog.images[it] if it else None) for im, it in zip(cs["image"], item)]
    top = np.ones((len(cs), catalog.num_top_categories), bool)
    if "target_categories" in cs:
        lookup = {name: i for i, name in enumerate(catalog.top_names)}
        for r, names in enumerate(cs["target_categories"]):
            if names is None or (not isinstance(names, str) and len(names) == 0):
                continue  # untargeted
            names = [names] if isinstance(names, str) else list(names)
            known = [lookup[n] for n in names if n in lookup]
            if known:
                top[r] = False
                top[r, known] = True
    price = np.ones((len(cs), catalog.num_price_buckets), bool)
    if "target_price_min" in cs or "target_price_max" in cs:
        prices = catalog.price[1:]
        for r in range(len(cs)):
            lo = cs["target_price_min"].iloc[r] if "target_price_min" in cs else None
            hi = cs["target_price_max"].iloc[r] if "target_price_max" in cs else None
            lo = -np.inf if lo is None or pd.isna(lo) else float(lo)
            hi = np.inf if hi is None or pd.isna(hi) else float(hi)
            inside = (prices >= lo) & (prices <= hi)
            if np.isfinite(lo) or np.isfinite(hi):
                price[r] = False
                price[r, np.unique(catalog.price_bucket[1:][inside])] = True
                price[r, 0] = True  # items of unknown price are never excluded by a price target
    log = dataset.ad_impressions
    return Campaigns(campaign_ids=ids, text=[str(t) for t in cs["title"]], item=item, images=images,
                     audience_top=top, audience_price=price, log_user=user_code(log["user_id"]),
                     log_time=log["timestamp"].to_numpy(np.int64),
                     log_campaign=np.searchsorted(ids, log["campaign_id"].to_numpy(np.int64)).astype(np.int64),
                     log_click=log["clicked"].to_numpy().astype(np.int64))


def encode(dataset: Dataset) -> BuildData:
    """Dense ids and arrays of a validated dataset."""
    catalog = _item_table(dataset)
    tables = [dataset.events] + [t for t in (dataset.impressions, dataset.ad_impressions) if t is not None]
    user_ids = np.array(sorted(set().union(*(set(t["user_id"].tolist()) for t in tables))), dtype=object)
    lookup = {u: i for i, u in enumerate(user_ids.tolist())}

    def user_code(column: pd.Series) -> np.ndarray:
        return np.fromiter((lookup[u] for u in column.tolist()), np.int64, count=len(column))

    events = dataset.events
    users = user_code(events["user_id"])
    ts = events["timestamp"].to_numpy(np.int64)
    order = np.lexsort((np.arange(len(users)), ts, users))
    data = BuildData(
        name=dataset.meta.name, meta=dataset.meta, catalog=catalog, user_ids=user_ids,
        event_user=users[order],
        event_item=np.searchsorted(catalog.item_ids[1:], events["item_id"].to_numpy(np.int64))[order] + 1,
        event_behavior=events["behavior"].to_numpy(np.int64)[order], event_timestamp=ts[order],
        source=dataset.directory)
    if dataset.impressions is not None:
        imp = dataset.impressions
        data.impression_user = user_code(imp["user_id"])
        data.impression_item = np.searchsorted(catalog.item_ids[1:], imp["item_id"].to_numpy(np.int64)) + 1
        data.impression_time = imp["timestamp"].to_numpy(np.int64)
        data.impression_click = imp["clicked"].to_numpy().astype(np.int64)
    if dataset.has_ads:
        data.campaigns = _campaigns(dataset, catalog, user_code)
    return data


def load_build_data(directory: str | Path, check_images: bool = True) -> BuildData:
    return encode(load_dataset(directory, check_images=check_images))


@contextlib.contextmanager
def dataset_directory(dataset: str | Path | None, simulator=None, seed: int = 0):
    """Yields (directory, provenance): `dataset` itself, or (when empty) the simulator's dataset for `simulator`
    (a data.simulator.SimConfig) and `seed`, written into a temporary directory that lives for the block."""
    if dataset:
        yield Path(dataset), {"source": str(Path(dataset).resolve())}
        return
    from data.simulator import SimConfig, simulate, write_dataset

    simulator = simulator or SimConfig(seed=seed)
    with tempfile.TemporaryDirectory(prefix="simulator-dataset-") as tmp:
        directory = Path(tmp) / "dataset"
        write_dataset(simulate(simulator), directory, seed=seed)
        yield directory, {"source": "simulator", "simulator": dataclasses.asdict(simulator)}


def build_data_of(config) -> BuildData:
    """The data a build configuration (exporters.config.BuildConfig, or one read back from a build manifest)
    trained on: its dataset directory, or its simulator's dataset."""
    with dataset_directory(config.dataset, config.simulator, config.seed) as (directory, _):
        return load_build_data(directory, check_images=False)
