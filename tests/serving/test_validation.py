"""Validation shared by every service: the same bad history gets the same answer from each."""

from __future__ import annotations

import numpy as np
import pytest

from serving.contract import RequestError
from serving.validation import check_ids, integer_array, validate_history

BAD_HISTORIES = {
    "empty": (([], [], []), "item_ids", "history is empty"),
    "too long": (([1] * 6, [1] * 6, list(range(6))), "item_ids", "the maximum is 5"),
    "unknown item": (([1, 11], [1, 1], [1, 2]), "item_ids", "valid ids are 1..10"),
    "float item": (([1.5], [1], [1]), "item_ids", "integer"),
    "lengths": (([1, 2], [1], [1, 2]), "behaviors/timestamps", "lengths must equal"),
    "behavior": (([1, 2], [1, 7], [1, 2]), "behaviors", "unknown behavior 7"),
    "order": (([1, 2], [1, 1], [5, 4]), "timestamps", "non-decreasing"),
}


@pytest.mark.parametrize("case", list(BAD_HISTORIES))
def test_bad_histories_name_the_field_and_the_limit(case):
    (items, behs, ts), field, words = BAD_HISTORIES[case]
    with pytest.raises(RequestError, match=words) as err:
        validate_history(np.asarray(items), np.asarray(behs), np.asarray(ts), max_history=5, num_items=10)
    assert err.value.field == field


def test_good_history_comes_back_as_int64():
    items, behs, ts = validate_history(np.array([3, 4], np.int32), np.array([1, 4], np.int32),
                                       np.array([7, 7], np.int64), max_history=5, num_items=10)
    assert items.dtype == behs.dtype == ts.dtype == np.int64
    np.testing.assert_array_equal(items, [3, 4])


def test_ids_and_dtypes():
    with pytest.raises(RequestError, match="unknown category 4; valid ids are 0..3"):
        check_ids("category_ids", np.array([0, 4]), 0, 3, "category")
    with pytest.raises(RequestError, match="float"):
        integer_array("k", np.array([1.0]))
