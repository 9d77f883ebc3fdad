"""The dataset contract: a shop's own data, read and validated (docs/dataset.md).

A dataset is a directory of Parquet files (CSV with the same columns and base names accepted too):
``items`` and ``events`` are required, ``impressions`` is optional, ``campaigns`` + ``ad_impressions`` are
optional together, and ``dataset.json`` optionally names the dataset and its event vocabulary.

``load_dataset(directory)`` either accepts every row of every file or raises :class:`DatasetError` naming the
file, the column and an example row with its values. Nothing is silently dropped. numpy/pandas/pyarrow/Pillow
only: no torch, so the validator runs anywhere.

CLI: ``python -m data.dataset DIR`` validates and prints the summary as JSON (exit 2 on a DatasetError).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.contract import DEFAULT_EVENT_NAMES

DEFAULT_EVENTS = DEFAULT_EVENT_NAMES  # the serving contract's default vocabulary
CATEGORY_SEPARATOR = " > "
META_FILE = "dataset.json"
META_KEYS = ("name", "events", "conversion_event", "time_zone", "repeats")
_SUFFIXES = (".parquet", ".csv")
_TRUE = {"true", "1", "t", "yes", "y"}
_FALSE = {"false", "0", "f", "no", "n"}

# The contract columns of each table (required, optional); the order is the order of the loaded frames.
ITEM_COLUMNS = (("item_id", "title", "category"), ("brand", "price", "image"))
EVENT_COLUMNS = (("user_id", "item_id", "event", "timestamp"), ())
IMPRESSION_COLUMNS = (("user_id", "item_id", "timestamp", "clicked"), ())
CAMPAIGN_COLUMNS = (("campaign_id", "title"), ("image", "item_id"))
AD_IMPRESSION_COLUMNS = (("user_id", "campaign_id", "timestamp", "clicked"), ())


class DatasetError(ValueError):
    """A dataset that breaks the contract.

    ``file`` is the file name (``items.parquet``, ``dataset.json``, or the directory for directory-level
    problems), ``column`` the column (or dataset.json key) or None, ``row`` the 0-based row index in the file
    (the first data row of a CSV is row 0) or None.
    """

    def __init__(self, file: str, message: str, column: str | None = None, row: int | None = None,
                 values: dict[str, Any] | None = None):
        self.file, self.column, self.row, self.values = file, column, row, dict(values or {})
        self.reason = message
        where = [f"column {column}"] if column is not None else []
        if row is not None:
            shown = ", ".join(f"{k}={_show(v)}" for k, v in self.values.items())
            where.append(f"row {row}" + (f" ({shown})" if shown else ""))
        prefix = f"{file}: " + (", ".join(where) + ": " if where else "")
        super().__init__(prefix + message)


def _show(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return "null"
    try:
        if pd.isna(value) is True:
            return "null"
    except (TypeError, ValueError):
        pass
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class DatasetMeta:
    """dataset.json, with defaults: the event vocabulary fixes the behaviour codes (1 + index; 0 is padding)."""

    name: str
    events: tuple[str, ...] = DEFAULT_EVENTS
    conversion_event: str = DEFAULT_EVENTS[-1]
    time_zone: str = "UTC"
    # False: a user never interacts with an item twice (MovieLens rates a movie once), so evaluation and the
    # served recommendations leave out the items of the request's history.
    repeats: bool = True

    def behavior_code(self, event: str) -> int:
        try:
            return 1 + self.events.index(event)
        except ValueError:
            raise KeyError(f"unknown event {event!r}; the vocabulary is {list(self.events)}") from None

    @property
    def conversion_code(self) -> int:
        return self.behavior_code(self.conversion_event)

    @property
    def num_behaviors(self) -> int:
        """Number of behaviour codes including padding (0)."""
        return len(self.events) + 1

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "events": list(self.events), "conversion_event": self.conversion_event,
                "time_zone": self.time_zone, "repeats": self.repeats}


@dataclass
class Dataset:
    """A validated dataset. Frames have normalized dtypes (see docs/dataset.md)."""

    directory: Path
    meta: DatasetMeta
    items: pd.DataFrame
    events: pd.DataFrame
    impressions: pd.DataFrame | None = None
    campaigns: pd.DataFrame | None = None
    ad_impressions: pd.DataFrame | None = None
    files: dict[str, str] = field(default_factory=dict)  # table name -> file name it was read from

    @property
    def has_ads(self) -> bool:
        return self.campaigns is not None and self.ad_impressions is not None

    def category_levels(self) -> list[list[str]]:
        """The category path of each item (in items order), coarse to fine."""
        return [c.split(CATEGORY_SEPARATOR) for c in self.items["category"]]

    def top_categories(self) -> list[str]:
        """Sorted unique top-level category names."""
        return sorted({levels[0] for levels in self.category_levels()})

    def image_path(self, image: str) -> Path:
        """Absolute path of an ``image`` value (relative to the dataset directory)."""
        return self.directory / image

    def summary(self) -> dict[str, Any]:
        """Counts for a quick look; JSON-serialisable."""
        depths = [len(levels) for levels in self.category_levels()]
        by_name = self.events["event"].value_counts()
        out: dict[str, Any] = {
            "name": self.meta.name,
            "directory": str(self.directory),
            "events_vocabulary": list(self.meta.events),
            "conversion_event": self.meta.conversion_event,
            "time_zone": self.meta.time_zone,
            "items": int(len(self.items)),
            "users": int(self.events["user_id"].nunique()),
            "events": int(len(self.events)),
            "events_by_name": {name: int(by_name.get(name, 0)) for name in self.meta.events},
            "event_time_range": [int(self.events["timestamp"].min()), int(self.events["timestamp"].max())],
            "impressions": int(len(self.impressions)) if self.impressions is not None else 0,
            "impression_clicks": int(self.impressions["clicked"].sum()) if self.impressions is not None else 0,
            "campaigns": int(len(self.campaigns)) if self.campaigns is not None else 0,
            "ad_impressions": int(len(self.ad_impressions)) if self.ad_impressions is not None else 0,
            "ad_clicks": int(self.ad_impressions["clicked"].sum()) if self.ad_impressions is not None else 0,
            "items_with_images": int(self.items["image"].notna().sum()),
            "items_with_brand": int(self.items["brand"].notna().sum()),
            "items_with_price": int(self.items["price"].notna().sum()),
            "top_categories": len(self.top_categories()),
            "categories": int(self.items["category"].nunique()),
            "category_depth": {"min": int(min(depths)), "max": int(max(depths))},
            "files": dict(self.files),
        }
        return out


# ---------------------------------------------------------------------------------------------------- reading


def _find_table(directory: Path, base: str) -> Path | None:
    present = [directory / (base + s) for s in _SUFFIXES if (directory / (base + s)).is_file()]
    if len(present) > 1:
        raise DatasetError(f"{base}.parquet", f"both {base}.parquet and {base}.csv are present; keep one")
    return present[0] if present else None


def _files_found(directory: Path) -> str:
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    return ", ".join(names) if names else "no files"


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            # Every column as text (keeps user ids such as "007" intact); empty cells are null.
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a broken file
        raise DatasetError(path.name, f"cannot read the file: {type(exc).__name__}: {exc}") from None
    if any(name is not None for name in df.index.names):
        df = df.reset_index()  # a pandas index written to Parquet (e.g. item_id) is a column of the file
    return df.reset_index(drop=True)


def _require_columns(df: pd.DataFrame, file: str, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns)) if len(df.columns) else "none"
        raise DatasetError(file, f"missing required column(s) {', '.join(missing)} (columns found: {found})",
                           column=missing[0])


class _Table:
    """One file being validated: the raw frame (for error rows) and the file name."""

    def __init__(self, path: Path, columns: tuple[tuple[str, ...], tuple[str, ...]]):
        self.file = path.name
        self.raw = _read_table(path)
        _require_columns(self.raw, self.file, columns[0])
        self.shown = [c for c in columns[0] + columns[1] if c in self.raw.columns]

    def error(self, column: str | None, row: int | None, message: str) -> DatasetError:
        values = {c: self.raw[c].iloc[row] for c in self.shown} if row is not None else None
        return DatasetError(self.file, message, column=column, row=row, values=values)

    def fail_first(self, column: str, mask: np.ndarray, message: str) -> None:
        """Raise for the first row where mask is true (with the number of rows affected)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            rows = np.flatnonzero(mask)
            more = f" ({len(rows)} rows affected)" if len(rows) > 1 else ""
            raise self.error(column, int(rows[0]), message + more)

    # -- coercions -------------------------------------------------------------------------------------------

    def null_mask(self, column: str) -> np.ndarray:
        s = self.raw[column]
        mask = np.array(s.isna().to_numpy(), dtype=bool)
        if isinstance(s.dtype, pd.StringDtype):  # fast path: a text column (Parquet strings, every CSV column)
            mask |= s.str.strip().eq("").fillna(False).to_numpy(dtype=bool)
        elif s.dtype == object:
            blank = [isinstance(v, str) and not v.strip() for v in s.tolist()]
            mask |= np.asarray(blank, dtype=bool)
        return mask

    def require_non_null(self, column: str) -> None:
        self.fail_first(column, self.null_mask(column), "null or empty value in a required column")

    def int64(self, column: str, what: str = "an integer") -> np.ndarray:
        """Non-null int64 values; the first value that is not an integer raises."""
        self.require_non_null(column)
        s = self.raw[column]
        if pd.api.types.is_bool_dtype(s.dtype):
            raise self.error(column, 0, f"expected {what}, found booleans")
        if pd.api.types.is_integer_dtype(s.dtype):
            values = s.to_numpy()
            if values.dtype == np.uint64 and (values > np.iinfo(np.int64).max).any():
                self.fail_first(column, values > np.iinfo(np.int64).max, f"{what} does not fit in int64")
            return values.astype(np.int64)
        if pd.api.types.is_float_dtype(s.dtype):
            values = s.to_numpy(dtype=np.float64)
            self.fail_first(column, ~np.isfinite(values) | (values != np.floor(values)),
                            f"expected {what}, found a non-integral number")
            return values.astype(np.int64)
        out = np.empty(len(s), dtype=np.int64)
        for i, v in enumerate(s.tolist()):  # text (CSV) or mixed objects: exact, row by row
            try:
                out[i] = _parse_int(v)
            except (TypeError, ValueError, OverflowError):
                raise self.error(column, i, f"cannot convert {_show(v)} to {what}") from None
        return out

    def text(self, column: str, required: bool = True) -> np.ndarray:
        """Object array of stripped str (None where null/empty; required columns reject those)."""
        if required:
            self.require_non_null(column)
        s = self.raw[column]
        if pd.api.types.is_float_dtype(s.dtype):  # e.g. numeric user ids with a null: keep 42, not 42.0
            vals = s.to_numpy(dtype=np.float64)
            self.fail_first(column, np.isfinite(vals) & (vals != np.floor(vals)),
                            "expected text or an integer, found a fractional number")
        if isinstance(s.dtype, pd.StringDtype):  # fast path
            stripped = s.str.strip()
            out = stripped.astype(object).to_numpy(dtype=object, copy=True)
            out[(stripped.isna() | stripped.eq("")).to_numpy(dtype=bool)] = None
            return out
        out = np.empty(len(s), dtype=object)
        for i, v in enumerate(s.tolist()):
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
                out[i] = None
            elif isinstance(v, str):
                out[i] = v.strip() or None
            elif isinstance(v, bytes):
                try:
                    out[i] = v.decode("utf-8").strip() or None
                except UnicodeDecodeError:
                    raise self.error(column, i, "bytes that are not UTF-8 text") from None
            elif isinstance(v, (bool, np.bool_)):
                out[i] = str(bool(v)).lower()
            elif isinstance(v, (float, np.floating)):
                out[i] = str(int(v)) if float(v).is_integer() else str(v)
            else:
                out[i] = str(v)
        return out

    def timestamp(self, column: str) -> np.ndarray:
        """int64 unix seconds from ints, floats (floored), datetimes (naive = UTC) or text of either."""
        self.require_non_null(column)
        s = self.raw[column]
        if pd.api.types.is_bool_dtype(s.dtype):
            raise self.error(column, 0, "expected a timestamp, found booleans")
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            out = _datetime_seconds(s)
        elif pd.api.types.is_integer_dtype(s.dtype):
            out = s.to_numpy().astype(np.int64)
        elif pd.api.types.is_float_dtype(s.dtype):
            vals = s.to_numpy(dtype=np.float64)
            self.fail_first(column, ~np.isfinite(vals), "timestamp is not a finite number")
            out = np.floor(vals).astype(np.int64)
        else:
            values = s.astype(object)
            numeric = pd.to_numeric(values.map(lambda v: v.strip() if isinstance(v, str) else v),
                                    errors="coerce")
            out = np.zeros(len(s), dtype=np.int64)
            is_num = numeric.notna().to_numpy() & np.isfinite(numeric.to_numpy(dtype=np.float64, na_value=np.nan))
            if is_num.any():
                if pd.api.types.is_integer_dtype(numeric.dtype):
                    out[is_num] = numeric.to_numpy()[is_num].astype(np.int64)
                else:
                    exact = [_parse_int_or_floor(v) for v in values[is_num]]
                    out[is_num] = np.asarray(exact, dtype=np.int64)
            rest = ~is_num
            if rest.any():
                parsed = pd.to_datetime(values[rest], utc=True, format="ISO8601", errors="coerce")
                bad = parsed.isna().to_numpy()
                if bad.any():
                    row = int(np.flatnonzero(rest)[np.flatnonzero(bad)[0]])
                    raise self.error(column, row, f"unparsable timestamp {_show(s.iloc[row])} (expected unix "
                                                  "seconds or an ISO 8601 date/time)")
                out[rest] = _datetime_seconds(parsed)
        self.fail_first(column, out < 0, "negative timestamp (before 1970-01-01)")
        return out

    def boolean(self, column: str) -> np.ndarray:
        self.require_non_null(column)
        s = self.raw[column]
        if pd.api.types.is_bool_dtype(s.dtype):
            return s.to_numpy(dtype=bool)
        out = np.empty(len(s), dtype=bool)
        for i, v in enumerate(s.tolist()):
            if isinstance(v, (bool, np.bool_)):
                out[i] = bool(v)
            elif isinstance(v, (int, np.integer, float, np.floating)) and v in (0, 1):
                out[i] = bool(v)
            elif isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
                out[i] = v.strip().lower() in _TRUE
            else:
                raise self.error(column, i, f"expected a boolean (true/false or 0/1), found {_show(v)}")
        return out

    def price(self, column: str) -> np.ndarray:
        s = self.raw[column]
        null = self.null_mask(column)
        if pd.api.types.is_bool_dtype(s.dtype):
            raise self.error(column, 0, "expected a price, found booleans")
        if pd.api.types.is_numeric_dtype(s.dtype):
            out = np.array(s.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
        else:
            out = np.full(len(s), np.nan)
            for i, v in enumerate(s.tolist()):
                if null[i]:
                    continue
                try:
                    out[i] = float(v.strip() if isinstance(v, str) else v)
                except (TypeError, ValueError):
                    raise self.error(column, i, f"cannot convert {_show(v)} to a price") from None
        out[null] = np.nan
        self.fail_first(column, ~null & ~np.isfinite(out), "price is not a finite number")
        self.fail_first(column, ~null & (out < 0), "negative price")
        return out


def _parse_int(v: Any) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError("boolean")
    if isinstance(v, (int, np.integer)):
        out = int(v)
    elif isinstance(v, (float, np.floating)):
        if not float(v).is_integer():
            raise ValueError("not integral")
        out = int(v)
    else:
        text = v.decode() if isinstance(v, bytes) else str(v)
        text = text.strip()
        try:
            out = int(text)
        except ValueError:
            f = float(text)  # "12.0" is accepted, "12.5" is not
            if not f.is_integer():
                raise
            out = int(f)
    if not -(2**63) <= out < 2**63:
        raise OverflowError("does not fit in int64")
    return out


def _parse_int_or_floor(v: Any) -> int:
    try:
        return _parse_int(v)
    except (TypeError, ValueError):
        return int(math.floor(float(v.strip() if isinstance(v, str) else v)))


def _datetime_seconds(s: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    s = pd.Series(s)
    if s.dt.tz is None:
        s = s.dt.tz_localize("UTC")
    delta = s - pd.Timestamp(0, tz="UTC")
    return (delta // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def _str_series(values: np.ndarray) -> pd.Series:
    return pd.Series(values, dtype="str")


def _optional_series(values: np.ndarray) -> pd.Series:
    return pd.Series(values, dtype=object)


# ------------------------------------------------------------------------------------------------ the tables


def _load_meta(directory: Path) -> DatasetMeta:
    path = directory / META_FILE
    name = directory.resolve().name
    if not path.exists():
        return DatasetMeta(name=name)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(META_FILE, f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise DatasetError(META_FILE, f"expected a JSON object, found {type(raw).__name__}")
    for key in raw:
        if key not in META_KEYS:
            raise DatasetError(META_FILE, f"unknown key {key!r} (allowed keys: {', '.join(META_KEYS)})",
                               column=key)
    if "name" in raw:
        if not isinstance(raw["name"], str) or not raw["name"].strip():
            raise DatasetError(META_FILE, f"expected a non-empty string, found {raw['name']!r}", column="name")
        name = raw["name"].strip()
    events = DEFAULT_EVENTS
    if "events" in raw:
        ev = raw["events"]
        if not isinstance(ev, list) or not ev or not all(isinstance(e, str) and e.strip() for e in ev):
            raise DatasetError(META_FILE, f"expected a non-empty list of event names, found {ev!r}",
                               column="events")
        events = tuple(e.strip() for e in ev)
        dupes = sorted({e for e in events if events.count(e) > 1})
        if dupes:
            raise DatasetError(META_FILE, f"duplicate event name(s) {dupes}", column="events")
    conversion = events[-1]
    if "conversion_event" in raw:
        conversion = raw["conversion_event"]
        if conversion not in events:
            raise DatasetError(META_FILE, f"{conversion!r} is not one of the events {list(events)}",
                               column="conversion_event")
    time_zone = "UTC"
    if "time_zone" in raw:
        time_zone = raw["time_zone"]
        try:
            if not isinstance(time_zone, str):
                raise ValueError
            zoneinfo.ZoneInfo(time_zone)
        except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
            raise DatasetError(META_FILE, f"unknown IANA time zone {time_zone!r}", column="time_zone") from None
    repeats = raw.get("repeats", True)
    if not isinstance(repeats, bool):
        raise DatasetError(META_FILE, f"expected true or false, found {repeats!r}", column="repeats")
    return DatasetMeta(name=name, events=events, conversion_event=conversion, time_zone=time_zone, repeats=repeats)


def _check_images(t: _Table, column: str, images: np.ndarray, directory: Path, check_images: bool) -> None:
    root = directory.resolve()
    for i, rel in enumerate(images):
        if rel is None:
            continue
        path = Path(rel)
        if path.is_absolute():
            raise t.error(column, i, "image path must be relative to the dataset directory")
        full = (directory / path).resolve()
        if root not in full.parents:
            raise t.error(column, i, "image path leaves the dataset directory")
        if not full.is_file():
            raise t.error(column, i, f"image file not found: {directory / path}")
        if check_images:
            from PIL import Image

            try:
                with Image.open(full) as im:
                    im.verify()
            except Exception as exc:  # noqa: BLE001 - anything Pillow cannot open is unreadable
                raise t.error(column, i, f"Pillow cannot open the image: {type(exc).__name__}: {exc}") from None


def _load_items(path: Path, directory: Path, check_images: bool) -> tuple[pd.DataFrame, _Table]:
    t = _Table(path, ITEM_COLUMNS)
    if len(t.raw) == 0:
        raise DatasetError(t.file, "no items")
    item_id = t.int64("item_id", "an item id (int64)")
    dup = pd.Series(item_id).duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(item_id == item_id[row])[0])
        t.fail_first("item_id", dup, f"duplicate item id (first seen at row {first})")
    title = t.text("title")
    raw_category = t.text("category")
    category = np.empty(len(raw_category), dtype=object)
    for i, c in enumerate(raw_category):
        levels = [level.strip() for level in c.split(">")]
        if any(not level for level in levels):
            raise t.error("category", i, f"empty category level in {c!r} (levels are separated by ' > ')")
        category[i] = CATEGORY_SEPARATOR.join(levels)
    n = len(t.raw)
    brand = t.text("brand", required=False) if "brand" in t.raw else np.full(n, None, dtype=object)
    price = t.price("price") if "price" in t.raw else np.full(n, np.nan)
    image = t.text("image", required=False) if "image" in t.raw else np.full(n, None, dtype=object)
    _check_images(t, "image", image, directory, check_images)
    items = pd.DataFrame({"item_id": item_id, "title": _str_series(title), "category": _str_series(category),
                          "brand": _optional_series(brand), "price": price.astype(np.float64),
                          "image": _optional_series(image)})
    return items, t


def _known(t: _Table, column: str, values: np.ndarray, known: np.ndarray, what: str, where: str) -> None:
    unknown = ~np.isin(values, known)
    t.fail_first(column, unknown, f"unknown {what} (not in {where})")


def _load_events(path: Path, items: pd.DataFrame, items_file: str, meta: DatasetMeta) -> pd.DataFrame:
    t = _Table(path, EVENT_COLUMNS)
    if len(t.raw) == 0:
        raise DatasetError(t.file, "no events: the events table is empty")
    user = t.text("user_id")
    item_id = t.int64("item_id", "an item id (int64)")
    _known(t, "item_id", item_id, items["item_id"].to_numpy(), "item id", items_file)
    event = t.text("event")
    codes = {name: 1 + i for i, name in enumerate(meta.events)}
    behavior = np.fromiter((codes.get(e, 0) for e in event), dtype=np.int64, count=len(event))
    t.fail_first("event", behavior == 0, f"unknown event name (the vocabulary is {list(meta.events)}; set "
                                         f"\"events\" in {META_FILE} for another one)")
    ts = t.timestamp("timestamp")
    user_s = _str_series(user)
    codes_u, uniques = pd.factorize(user_s, sort=True)
    order = np.lexsort((ts, codes_u))  # stable: equal (user, timestamp) rows keep their file order
    events = pd.DataFrame({"user_id": user_s, "item_id": item_id, "event": _str_series(event),
                           "behavior": behavior, "timestamp": ts})
    return events.iloc[order].reset_index(drop=True)


def _load_impressions(path: Path, key: str, known: np.ndarray, known_file: str,
                      columns: tuple[tuple[str, ...], tuple[str, ...]], what: str) -> pd.DataFrame:
    t = _Table(path, columns)
    user = t.text("user_id")
    ids = t.int64(key, f"{what} (int64)")
    _known(t, key, ids, known, what, known_file)
    ts = t.timestamp("timestamp")
    clicked = t.boolean("clicked")
    return pd.DataFrame({"user_id": _str_series(user), key: ids, "timestamp": ts, "clicked": clicked})


def _load_campaigns(path: Path, items: pd.DataFrame, items_file: str, directory: Path,
                    check_images: bool) -> pd.DataFrame:
    t = _Table(path, CAMPAIGN_COLUMNS)
    cid = t.int64("campaign_id", "a campaign id (int64)")
    dup = pd.Series(cid).duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(cid == cid[row])[0])
        t.fail_first("campaign_id", dup, f"duplicate campaign id (first seen at row {first})")
    out = t.raw.copy()
    out["campaign_id"] = cid
    out["title"] = _str_series(t.text("title"))
    if "image" in t.raw:
        image = t.text("image", required=False)
        _check_images(t, "image", image, directory, check_images)
        out["image"] = _optional_series(image)
    else:
        out["image"] = _optional_series(np.full(len(out), None, dtype=object))
    if "item_id" in t.raw:
        null = t.null_mask("item_id")
        ids = np.zeros(len(out), dtype=np.int64)
        if (~null).any():
            for i in np.flatnonzero(~null):
                try:
                    ids[i] = _parse_int(t.raw["item_id"].iloc[i])
                except (TypeError, ValueError, OverflowError):
                    raise t.error("item_id", int(i), f"cannot convert {_show(t.raw['item_id'].iloc[i])} to an "
                                                     "item id (int64)") from None
            unknown = ~null & ~np.isin(ids, items["item_id"].to_numpy())
            t.fail_first("item_id", unknown, f"unknown promoted item id (not in {items_file})")
        out["item_id"] = pd.array([None if n else int(v) for n, v in zip(null, ids)], dtype="Int64")
    else:
        out["item_id"] = pd.array([None] * len(out), dtype="Int64")
    first = ["campaign_id", "title", "image", "item_id"]
    return out[first + [c for c in out.columns if c not in first]]


def load_dataset(directory: str | Path, check_images: bool = True) -> Dataset:
    """Read and validate a dataset directory; raises DatasetError on the first problem found.

    ``check_images``: open every image with Pillow (``Image.open(...).verify()``); existence is always checked.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(str(directory), "not a directory")
    meta = _load_meta(directory)
    paths = {base: _find_table(directory, base)
             for base in ("items", "events", "impressions", "campaigns", "ad_impressions")}
    for base in ("items", "events"):
        if paths[base] is None:
            raise DatasetError(f"{base}.parquet", f"required file missing (also looked for {base}.csv; files "
                                                  f"found in {directory}: {_files_found(directory)})")
    if (paths["campaigns"] is None) != (paths["ad_impressions"] is None):
        have, lack = ("campaigns", "ad_impressions") if paths["campaigns"] else ("ad_impressions", "campaigns")
        raise DatasetError(paths[have].name, f"{have} without {lack}: campaigns.parquet and "
                                             "ad_impressions.parquet come together (both or neither)")
    items, items_t = _load_items(paths["items"], directory, check_images)
    events = _load_events(paths["events"], items, items_t.file, meta)
    impressions = campaigns = ad_impressions = None
    if paths["impressions"] is not None:
        impressions = _load_impressions(paths["impressions"], "item_id", items["item_id"].to_numpy(),
                                        items_t.file, IMPRESSION_COLUMNS, "item id")
    if paths["campaigns"] is not None:
        campaigns = _load_campaigns(paths["campaigns"], items, items_t.file, directory, check_images)
        ad_impressions = _load_impressions(paths["ad_impressions"], "campaign_id",
                                           campaigns["campaign_id"].to_numpy(), paths["campaigns"].name,
                                           AD_IMPRESSION_COLUMNS, "campaign id")
    files = {base: p.name for base, p in paths.items() if p is not None}
    return Dataset(directory=directory, meta=meta, items=items, events=events, impressions=impressions,
                   campaigns=campaigns, ad_impressions=ad_impressions, files=files)


# --- writing the contract (the simulator and MovieLens writers use these) ---------------------------------
@contextlib.contextmanager
def staged_dataset_dir(out_dir: Path, overwrite: bool):
    """Yield a fresh sibling folder to write into; on success it replaces `out_dir`, so a failed or interrupted
    run never leaves a half-written dataset. `out_dir` must be absent or empty, or (with `overwrite`) a
    dataset folder written before (one holding dataset.json)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise NotADirectoryError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (overwrite and (out_dir / META_FILE).is_file()):
            raise FileExistsError(f"{out_dir} is not empty; choose a new directory"
                                  + ("" if overwrite else " or pass overwrite=True (--overwrite) to replace a "
                                     "dataset written before"))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    stage.replace(out_dir)


def write_parquet(path: Path, columns: dict, schema) -> int:
    """Write columns with an explicit Arrow schema (so dtypes never depend on pandas' inference)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict(columns, schema=schema)
    pq.write_table(table, path)
    return table.num_rows


def write_dataset_json(path: Path, name: str, events: tuple[str, ...] | list[str], conversion_event: str,
                       repeats: bool = True) -> None:
    meta = {"name": name, "events": list(events), "conversion_event": conversion_event, "time_zone": "UTC",
            "repeats": repeats}
    Path(path).write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.dataset",
                                     description="Validate a dataset directory and print its summary as JSON.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--no-check-images", action="store_true",
                        help="do not open images with Pillow (existence is still checked)")
    args = parser.parse_args(argv)
    try:
        dataset = load_dataset(args.directory, check_images=not args.no_check_images)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(dataset.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
