"""The "recently interacted items" retrieval source: a shopper's next event very often returns to an item
just seen or carted (the simulator's repeat rate is about half; real shops see the same in cart and
re-purchase flows). Numpy only, no artifact beyond the catalog's categories."""

from __future__ import annotations

import numpy as np

from serving.contract import DEFAULT_EVENT_NAMES, behavior_code

REMOVAL_EVENT = "remove_from_cart"  # an item just removed from the cart is not offered back
REMOVE_FROM_CART = behavior_code(DEFAULT_EVENT_NAMES, REMOVAL_EVENT)


def recent_items(hist_items: np.ndarray, hist_behaviors: np.ndarray, eligible: np.ndarray, n: int,
                 removal_code: int | None = REMOVE_FROM_CART) -> tuple[np.ndarray, np.ndarray]:
    """The n most recent distinct eligible items of a right-aligned history (0 = pad), newest first, scored
    1 / (1 + rank) (rank 0 for the newest). An item whose latest event is a removal (`removal_code`: the
    vocabulary's remove_from_cart, None when it has none) is left out."""
    items = np.asarray(hist_items, np.int64)[::-1]  # newest first
    behaviors = np.asarray(hist_behaviors, np.int64)[::-1]
    real = items > 0
    items, behaviors = items[real], behaviors[real]
    _, first = np.unique(items, return_index=True)  # each item's newest event
    first = np.sort(first)
    items, behaviors = items[first], behaviors[first]
    keep = eligible[items] & (behaviors != (-1 if removal_code is None else removal_code))
    age = np.flatnonzero(keep)[:n]
    return items[age], (1.0 / (1.0 + np.arange(len(age)))).astype(np.float32)
