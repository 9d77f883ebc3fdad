"""A tiny valid dataset in the contract of data/dataset.py, and corrupt variants of it.

``write_fixture(directory, **overrides)`` writes ~12 items with sparse ids (10**12 + k), string user ids,
categories of depth 1 to 3, some items without brand/price/image values, images of several sizes and formats
under images/, ~60 events, organic impressions and (``ads=True``) campaigns + ad_impressions.

``write_corrupt(directory, kind)`` writes the valid fixture with one bad row (or file) and returns what the
DatasetError must name: ``Expected(file, column, row, text)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image

ITEM_BASE = 10**12
ITEM_KS = [3, 17, 42, 5, 99, 1000, 7, 256, 64, 12, 500, 31]  # sparse and not sorted on purpose
ITEM_IDS = [ITEM_BASE + k for k in ITEM_KS]
USERS = ["u-a", "u-b", "u-c", "u-d", "u-e", "u-f"]
DEFAULT_EVENTS = ("view", "add_to_cart", "remove_from_cart", "purchase")
MOVIELENS_EVENTS = ("rating_1", "rating_2", "rating_3", "rating_4", "rating_5")
T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC
NUM_EVENTS = 60

# (relative path, size, Pillow mode, format)
IMAGES = [
    ("images/a.png", (20, 30), "RGB", "PNG"),
    ("images/b.jpg", (64, 48), "RGB", "JPEG"),
    ("images/gray.png", (28, 28), "L", "PNG"),
    ("images/sub/c.webp", (33, 17), "RGBA", "WEBP"),
    ("images/d.gif", (9, 40), "P", "GIF"),
]

CATEGORIES = [
    "tops", "tops > t-shirts", "tops > t-shirts > graphic tees", "shoes > sneakers", "bags",
    "home > kitchen > mugs", "tops > shirts", "shoes > sneakers > running", "bags > totes", "home",
    "home > kitchen", "shoes",
]
BRANDS = ["acme", None, "northwind", "acme", None, "zephyr", "northwind", None, "acme", "zephyr", None, "acme"]
PRICES = [19.99, 5.0, None, 89.5, 0.0, None, 24.0, 120.0, None, 3.25, 15.0, 60.0]
IMAGE_OF_ITEM = ["images/a.png", "images/b.jpg", "images/gray.png", "images/sub/c.webp", "images/d.gif",
                 None, "images/a.png", "", "images/b.jpg", None, "images/gray.png", None]


def write_images(directory: Path) -> None:
    rng = np.random.default_rng(7)
    for rel, (w, h), mode, fmt in IMAGES:
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        channels = {"RGB": 3, "RGBA": 4}.get(mode, 1)
        pixels = rng.integers(0, 256, size=(h, w, channels) if channels > 1 else (h, w), dtype=np.uint8)
        img = Image.fromarray(pixels, mode="L" if mode == "P" else mode)
        if mode == "P":
            img = img.convert("P")
        img.save(path, format=fmt)


def items_table() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": np.asarray(ITEM_IDS, dtype=np.int64),
        "title": [f"Item {k} of the fixture shop" for k in ITEM_KS],
        "category": CATEGORIES,
        "brand": BRANDS,
        "price": np.asarray([np.nan if p is None else p for p in PRICES], dtype=np.float64),
        "image": IMAGE_OF_ITEM,
        "colour": ["red", "blue", "green"] * 4,  # extra column: ignored
    })


def events_table(timestamps: str = "datetime", vocabulary: tuple[str, ...] = DEFAULT_EVENTS,
                 seed: int = 0) -> pd.DataFrame:
    """~60 events in shuffled order; some (user, timestamp) ties to exercise the stable sort."""
    rng = np.random.default_rng(seed)
    users = rng.choice(USERS, size=NUM_EVENTS)
    users[: len(USERS)] = USERS  # every user has at least one event
    items = rng.choice(ITEM_IDS, size=NUM_EVENTS)
    p = np.linspace(2.0, 1.0, len(vocabulary))
    events = rng.choice(list(vocabulary), size=NUM_EVENTS, p=p / p.sum())
    secs = T0 + rng.integers(0, 5 * 86400, size=NUM_EVENTS)
    secs[10] = secs[11]  # a tie...
    users[10] = users[11]  # ...for the same user
    df = pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(np.int64), "event": events.astype(str),
                       "timestamp": secs.astype(np.int64), "session": rng.integers(0, 5, size=NUM_EVENTS)})
    return with_timestamps(df, timestamps)


def with_timestamps(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """kind: "int" (unix seconds), "datetime" (tz-naive = UTC), "aware" (tz-aware, Europe/Berlin)."""
    df = df.copy()
    secs = df["timestamp"].to_numpy(dtype=np.int64)
    if kind == "int":
        df["timestamp"] = secs
    elif kind == "datetime":
        df["timestamp"] = pd.to_datetime(secs, unit="s")
    elif kind == "aware":
        df["timestamp"] = pd.to_datetime(secs, unit="s", utc=True).tz_convert("Europe/Berlin")
    else:
        raise ValueError(kind)
    return df


def impressions_table(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 40
    return pd.DataFrame({"user_id": rng.choice(USERS, size=n), "item_id": rng.choice(ITEM_IDS, size=n),
                         "timestamp": T0 + rng.integers(0, 5 * 86400, size=n).astype(np.int64),
                         "clicked": rng.random(n) < 0.3})


def campaigns_table() -> pd.DataFrame:
    return pd.DataFrame({
        "campaign_id": np.asarray([900, 17, 4242], dtype=np.int64),
        "title": ["Big sneaker sale", "Mugs for every morning", "New brand in town"],
        "image": ["images/b.jpg", None, "images/a.png"],
        "item_id": pd.array([ITEM_IDS[3], ITEM_IDS[5], None], dtype="Int64"),
        "target_category": ["shoes", "home", None],  # targeting column: kept
    })


def ad_impressions_table(seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 30
    return pd.DataFrame({"user_id": rng.choice(USERS, size=n), "campaign_id": rng.choice([900, 17, 4242], size=n),
                         "timestamp": T0 + rng.integers(0, 5 * 86400, size=n).astype(np.int64),
                         "clicked": (rng.random(n) < 0.2).astype(np.int64)})  # 0/1 ints are accepted


def fixture_tables(*, timestamps: str = "datetime", vocabulary: tuple[str, ...] = DEFAULT_EVENTS,
                   impressions: bool = True, ads: bool = False) -> dict[str, pd.DataFrame]:
    tables = {"items": items_table(), "events": events_table(timestamps, vocabulary)}
    if impressions:
        tables["impressions"] = impressions_table()
    if ads:
        tables["campaigns"] = campaigns_table()
        tables["ad_impressions"] = ad_impressions_table()
    return tables


def write_table(directory: Path, name: str, df: pd.DataFrame, fmt: str = "parquet") -> Path:
    path = directory / f"{name}.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        raise ValueError(fmt)
    return path


def write_fixture(directory: str | Path, *, fmt: str = "parquet", timestamps: str = "datetime",
                  vocabulary: tuple[str, ...] = DEFAULT_EVENTS, with_impressions: bool = True, ads: bool = False,
                  meta: dict[str, Any] | None = None, images: bool = True,
                  **overrides: pd.DataFrame | Callable[[pd.DataFrame], pd.DataFrame] | None) -> Path:
    """Write the valid fixture; ``overrides`` replace a table by name (items, events, impressions, campaigns,
    ad_impressions): a DataFrame, a function of the valid table, or None (the file is not written). ``meta``
    is written as dataset.json; ``with_impressions``/``ads`` add the optional tables. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if images:
        write_images(directory)
    tables = fixture_tables(timestamps=timestamps, vocabulary=vocabulary, impressions=with_impressions, ads=ads)
    for name, value in overrides.items():
        if value is None:
            tables.pop(name, None)
        elif callable(value):
            tables[name] = value(tables[name])
        else:
            tables[name] = value
    for name, df in tables.items():
        write_table(directory, name, df, fmt)
    if meta is not None:
        (directory / "dataset.json").write_text(json.dumps(meta))
    return directory


# ------------------------------------------------------------------------------------------- corrupt variants


@dataclass(frozen=True)
class Expected:
    """What the DatasetError of a corrupt variant names."""

    file: str
    column: str | None
    row: int | None
    text: str  # a fragment of the message


def _set(df: pd.DataFrame, row: int, column: str, value: Any) -> pd.DataFrame:
    """Set one cell; a text value turns the whole column into text first (a Parquet column has one type)."""
    df = df.copy()
    if isinstance(value, str):
        df[column] = df[column].astype(str)
    df.loc[row, column] = value
    return df


def _corruptions() -> dict[str, tuple[dict[str, Any], Expected]]:
    """kind -> (write_fixture keyword arguments, expected error)."""
    return {
        "duplicate_item_id": (
            {"items": lambda df: _set(df, 3, "item_id", ITEM_IDS[1])},
            Expected("items.parquet", "item_id", 3, "duplicate item id (first seen at row 1)")),
        "unknown_event_item": (
            {"events": lambda df: _set(df, 5, "item_id", ITEM_BASE + 123456)},
            Expected("events.parquet", "item_id", 5, "unknown item id")),
        "missing_required_column": (
            {"events": lambda df: df.drop(columns=["event"])},
            Expected("events.parquet", "event", None, "columns found: user_id, item_id, timestamp")),
        "unparsable_timestamp": (
            {"events": lambda df: _set(df, 7, "timestamp", "yesterday-ish")},
            Expected("events.parquet", "timestamp", 7, "unparsable timestamp 'yesterday-ish'")),
        "negative_timestamp": (
            {"timestamps": "int", "events": lambda df: _set(df, 2, "timestamp", -5)},
            Expected("events.parquet", "timestamp", 2, "negative timestamp")),
        "unknown_event_name": (
            {"events": lambda df: _set(df, 4, "event", "wishlist")},
            Expected("events.parquet", "event", 4,
                     "the vocabulary is ['view', 'add_to_cart', 'remove_from_cart', 'purchase']")),
        "null_title": (
            {"items": lambda df: _set(df, 6, "title", None)},
            Expected("items.parquet", "title", 6, "null or empty value")),
        "empty_category_level": (
            {"items": lambda df: _set(df, 2, "category", "home >  > mugs")},
            Expected("items.parquet", "category", 2, "empty category level")),
        "negative_price": (
            {"items": lambda df: _set(df, 1, "price", -1.0)},
            Expected("items.parquet", "price", 1, "negative price")),
        "infinite_price": (
            {"items": lambda df: _set(df, 0, "price", float("inf"))},
            Expected("items.parquet", "price", 0, "not a finite number")),
        "bad_item_id": (
            {"items": lambda df: _set(df, 4, "item_id", "sku-12")},
            Expected("items.parquet", "item_id", 4, "cannot convert 'sku-12'")),
        "bad_item_id_csv": (
            {"fmt": "csv", "items": lambda df: _set(df, 4, "item_id", "12.5")},
            Expected("items.csv", "item_id", 4, "cannot convert '12.5'")),
        "unparsable_timestamp_csv": (
            {"fmt": "csv", "events": lambda df: _set(df, 9, "timestamp", "2023-13-45 10:00")},
            Expected("events.csv", "timestamp", 9, "unparsable timestamp '2023-13-45 10:00'")),
        "missing_image": (
            {"items": lambda df: _set(df, 9, "image", "images/nope.png")},
            Expected("items.parquet", "image", 9, "image file not found")),
        "unreadable_image": (
            {"items": lambda df: _set(df, 8, "image", "images/broken.png")},
            Expected("items.parquet", "image", 8, "Pillow cannot open the image")),
        "impression_unknown_item": (
            {"impressions": lambda df: _set(df, 3, "item_id", 42)},
            Expected("impressions.parquet", "item_id", 3, "unknown item id")),
        "bad_clicked": (
            {"impressions": lambda df: _set(df, 0, "clicked", "maybe")},
            Expected("impressions.parquet", "clicked", 0, "expected a boolean")),
        "campaigns_without_ad_impressions": (
            {"ads": True, "ad_impressions": None},
            Expected("campaigns.parquet", None, None, "campaigns without ad_impressions")),
        "ad_impression_unknown_campaign": (
            {"ads": True, "ad_impressions": lambda df: _set(df, 6, "campaign_id", 31337)},
            Expected("ad_impressions.parquet", "campaign_id", 6, "unknown campaign id")),
        "campaign_unknown_item": (
            {"ads": True, "campaigns": lambda df: _set(df, 2, "item_id", 77)},
            Expected("campaigns.parquet", "item_id", 2, "unknown promoted item id")),
        "empty_events": (
            {"events": lambda df: df.iloc[:0]},
            Expected("events.parquet", None, None, "no events")),
        "bad_meta_key": (
            {"meta": {"name": "shop", "currency": "EUR"}},
            Expected("dataset.json", "currency", None, "unknown key 'currency'")),
        "bad_time_zone": (
            {"meta": {"time_zone": "Mars/Olympus_Mons"}},
            Expected("dataset.json", "time_zone", None, "unknown IANA time zone")),
        "bad_conversion_event": (
            {"meta": {"conversion_event": "checkout"}},
            Expected("dataset.json", "conversion_event", None, "is not one of the events")),
        "csv_and_parquet": (
            {},  # the csv twin is written by write_corrupt
            Expected("items.parquet", None, None, "both items.parquet and items.csv")),
    }


CORRUPTIONS = sorted(_corruptions())


def write_corrupt(directory: str | Path, kind: str) -> Expected:
    """Write the fixture with one corruption (a name in CORRUPTIONS); returns what the error must name."""
    directory = Path(directory)
    kwargs, expected = _corruptions()[kind]
    write_fixture(directory, **kwargs)
    if kind == "unreadable_image":
        (directory / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    if kind == "csv_and_parquet":
        write_table(directory, "items", items_table(), "csv")
    return expected


# ------------------------------------------------------------------------------------ a fixture to build and serve

SERVED_USERS = [f"shopper-{i:03d}" for i in range(48)]


def write_served_fixture(directory: str | Path, *, ads: bool = True, impressions: bool = True) -> Path:
    """The fixture's catalog (sparse ids, depth 1-3 categories, missing brands/prices/images, images of several
    sizes and formats) with enough traffic for every build stage to have train, calibration and test users:
    48 string user ids with 8-20 events each, organic impressions and (``ads``) 600 ad impressions (enough for two warm campaigns; 4242 stays cold)."""
    rng = np.random.default_rng(11)
    rows = []
    for user in SERVED_USERS:
        # Each user favours a few items (repeat intent) and a top category: learnable, not random.
        favourites = rng.choice(ITEM_IDS, size=3, replace=False)
        t = T0 + int(rng.integers(0, 86400))
        for _ in range(int(rng.integers(8, 21))):
            item = rng.choice(favourites) if rng.random() < 0.6 else rng.choice(ITEM_IDS)
            t += int(rng.integers(30, 4000))
            rows.append((user, int(item), str(rng.choice(DEFAULT_EVENTS, p=[0.7, 0.15, 0.05, 0.1])), t))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "timestamp"])
    n = 400
    imp = pd.DataFrame({"user_id": rng.choice(SERVED_USERS, size=n), "item_id": rng.choice(ITEM_IDS, size=n),
                        "timestamp": T0 + rng.integers(0, 5 * 86400, size=n).astype(np.int64),
                        "clicked": rng.random(n) < 0.3})
    m = 600
    ad_imp = pd.DataFrame({"user_id": rng.choice(SERVED_USERS, size=m),
                           "campaign_id": rng.choice([900, 17, 4242], size=m, p=[0.5, 0.45, 0.05]),
                           "timestamp": T0 + rng.integers(0, 5 * 86400, size=m).astype(np.int64),
                           "clicked": rng.random(m) < 0.25})
    overrides = {"events": with_timestamps(events, "int"), "impressions": imp if impressions else None}
    if ads:
        overrides["ad_impressions"] = ad_imp
    return write_fixture(directory, ads=ads, with_impressions=impressions, **overrides)
