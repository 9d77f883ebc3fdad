"""The "recently interacted items" retrieval source: a shopper's next event very often returns to an item
just seen or carted (the simulator's repeat rate is about half; real shops see the same in cart and
re-purchase flows). Numpy only, no artifact beyond the catalog's categories."""

from __future__ import annotations

import numpy as np

REMOVE_FROM_CART = 3  # behaviour code: an item just removed from the cart is not offered back


def recent_items(hist_items: np.ndarray, hist_behaviors: np.ndarray, eligible: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The n most recent distinct eligible items of a right-aligned history (0 = pad), newest first, scored
    1 / (1 + rank) (rank 0 for the newest). An item whose latest event is a removal from the cart is left out."""
    items = np.asarray(hist_items, np.int64)[::-1]  # newest first
    behaviors = np.asarray(hist_behaviors, np.int64)[::-1]
    real = items > 0
    items, behaviors = items[real], behaviors[real]
    _, first = np.unique(items, return_index=True)  # each item's newest event
    first = np.sort(first)
    items, behaviors = items[first], behaviors[first]
    keep = eligible[items] & (behaviors != REMOVE_FROM_CART)
    age = np.flatnonzero(keep)[:n]
    return items[age], (1.0 / (1.0 + np.arange(len(age)))).astype(np.float32)
