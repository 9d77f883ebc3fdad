"""The recently-interacted-items retrieval source."""

from __future__ import annotations

import numpy as np

from serving.recent import recent_items


def _eligible(n: int, off=()) -> np.ndarray:
    mask = np.ones(n + 1, bool)
    mask[0] = False
    mask[list(off)] = False
    return mask


def test_newest_distinct_items_first_padding_ignored():
    hist = np.array([0, 0, 5, 7, 5, 9, 7], np.int64)  # right-aligned, 0 = pad
    behs = np.array([0, 0, 1, 1, 2, 1, 1], np.int64)
    items, scores = recent_items(hist, behs, _eligible(10), 10)
    np.testing.assert_array_equal(items, [7, 9, 5])
    np.testing.assert_allclose(scores, [1.0, 0.5, 1 / 3])
    assert items.dtype == np.int64 and scores.dtype == np.float32


def test_limit_filters_and_removed_from_cart():
    hist = np.array([1, 2, 3, 4, 5, 6], np.int64)
    behs = np.array([1, 1, 3, 1, 1, 1], np.int64)  # item 3 was last removed from the cart
    items, _ = recent_items(hist, behs, _eligible(10, off=[5]), 3)
    np.testing.assert_array_equal(items, [6, 4, 2])
    # An item removed and then viewed again is offered (its newest event decides).
    items, _ = recent_items(np.array([3, 3]), np.array([3, 1]), _eligible(5), 5)
    np.testing.assert_array_equal(items, [3])


def test_empty_and_nothing_eligible():
    items, scores = recent_items(np.zeros(4, np.int64), np.zeros(4, np.int64), _eligible(5), 5)
    assert len(items) == len(scores) == 0
    items, _ = recent_items(np.array([1, 2]), np.array([1, 1]), _eligible(3, off=[1, 2]), 5)
    assert len(items) == 0
