"""Request validation shared by every service: a clear RequestError (served as INVALID_ARGUMENT) that names
the field and the limit, for the event history every user-facing model takes and for id lists."""

from __future__ import annotations

import numpy as np

from serving.contract import DEFAULT_EVENT_NAMES, MAX_TIMESTAMP, RequestError
from serving.graph import BEHAVIORS, ITEM_IDS, TIMESTAMPS


def integer_array(field: str, value) -> np.ndarray:
    """The value as a 1-D array; refused unless it holds integers."""
    array = np.asarray(value).reshape(-1)
    if array.dtype.kind not in "iu":
        raise RequestError(field, f"expected an integer tensor, got dtype {array.dtype}")
    return array


def check_ids(field: str, ids: np.ndarray, low: int, high: int, noun: str) -> None:
    """Every id within low..high (inclusive)."""
    bad = ids[(ids < low) | (ids > high)]
    if len(bad):
        raise RequestError(field, f"unknown {noun} {int(bad[0])}; valid ids are {low}..{high}")


def validate_history(item_ids, behaviors, timestamps, *, max_history: int, num_items: int | None = None,
                     catalog=None, event_names: tuple[str, ...] = DEFAULT_EVENT_NAMES
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A user's events, oldest first -> (items, behaviors, timestamps) as int64 arrays of equal length.

    With `catalog` (serving.catalog.ItemIds) the item ids are the dataset's and come back as internal ids;
    without, they are internal ids checked against 1..num_items."""
    items = np.asarray(item_ids).reshape(-1)
    n = len(items)
    if n == 0:
        raise RequestError(ITEM_IDS.name, "history is empty; at least 1 event is required")
    items = integer_array(ITEM_IDS.name, items)
    behs = integer_array(BEHAVIORS.name, behaviors)
    ts = integer_array(TIMESTAMPS.name, timestamps)
    if n > max_history:
        raise RequestError(ITEM_IDS.name, f"history has {n} events; the maximum is {max_history}")
    if len(behs) != n or len(ts) != n:
        raise RequestError(f"{BEHAVIORS.name}/{TIMESTAMPS.name}", f"lengths must equal {ITEM_IDS.name} ({n}); got "
                           f"{BEHAVIORS.name}={len(behs)}, {TIMESTAMPS.name}={len(ts)}")
    if catalog is not None:
        items = catalog.to_internal(ITEM_IDS.name, items)
    else:
        check_ids(ITEM_IDS.name, items, 1, num_items, "item id")
    bad = behs[(behs < 1) | (behs > len(event_names))]
    if len(bad):
        names = ", ".join(f"{i + 1}={name}" for i, name in enumerate(event_names))
        raise RequestError(BEHAVIORS.name, f"unknown behavior {int(bad[0])}; valid values are "
                           f"1..{len(event_names)} ({names})")
    bad = ts[(ts < 0) | (ts > MAX_TIMESTAMP)]
    if len(bad):
        raise RequestError(TIMESTAMPS.name, f"value {int(bad[0])} is out of range; valid range is 0..{MAX_TIMESTAMP} "
                           "(unix seconds up to 2100-01-01)")
    if n > 1 and np.any(np.diff(ts) < 0):
        raise RequestError(TIMESTAMPS.name, "must be non-decreasing (oldest event first)")
    return items.astype(np.int64), behs.astype(np.int64), ts.astype(np.int64)
