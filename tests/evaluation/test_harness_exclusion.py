"""Evaluation of a dataset that never repeats an item: the history is dropped from each ranking, as served."""

import numpy as np

from evaluation.harness import without_history


def test_without_history_drops_history_items_then_cuts():
    ranked = np.array([[5, 3, 9, 1, 7], [2, 4, 6, 8, 0]])
    out = without_history(ranked, [np.array([3, 1]), np.array([], np.int64)], 3)
    np.testing.assert_array_equal(out, [[5, 9, 7], [2, 4, 6]])
    np.testing.assert_array_equal(without_history(ranked[:1], [np.array([5, 3, 9, 1])], 3), [[7, 0, 0]])
