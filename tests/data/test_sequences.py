"""SequenceDataset validation, the simulator adapter, leave-last-out and left padding."""

import numpy as np
import pytest

from data.sequences import SequenceDataset, from_world, leave_last_out, pad_left
from data.simulator import SimConfig, simulate


def tiny(user_items, behaviors=None, num_items=6):
    behaviors = behaviors or [[1] * len(x) for x in user_items]
    return SequenceDataset(
        name="tiny", num_items=num_items,
        item_attributes={"cat": np.arange(num_items + 1, dtype=np.int64) % 2},
        item_texts=[""] + [f"item {i}" for i in range(1, num_items + 1)],
        user_items=[np.array(x, np.int64) for x in user_items],
        user_behaviors=[np.array(b, np.int64) for b in behaviors],
        user_timestamps=[np.arange(len(x), dtype=np.float64) * 10 for x in user_items])


def test_leave_last_out_pairs_and_history_cap():
    ds = tiny([[1, 2, 3, 4, 5], [6, 1], [3]])
    split = leave_last_out(ds, max_history=2)
    # user 0: targets at positions 1..3 train, 4 test; user 1: only a test pair; user 2 (1 event): nothing.
    assert split.train.targets.tolist() == [2, 3, 4]
    assert [h.tolist() for h in split.train.histories] == [[1], [1, 2], [2, 3]]
    assert split.train.users.tolist() == [0, 0, 0] and split.train.positions.tolist() == [1, 2, 3]
    assert split.test.targets.tolist() == [5, 1]
    assert [h.tolist() for h in split.test.histories] == [[3, 4], [6]]
    assert split.test.timestamps[0].tolist() == [20.0, 30.0]
    assert split.valid is None


def test_leave_last_out_validation_holds_out_second_last():
    ds = tiny([[1, 2, 3, 4, 5], [6, 1]])
    split = leave_last_out(ds, max_history=10, validation=True)
    assert split.train.targets.tolist() == [2, 3]
    assert split.valid.targets.tolist() == [4]
    assert split.valid.histories[0].tolist() == [1, 2, 3]
    assert split.test.targets.tolist() == [5, 1]
    assert split.test.histories[0].tolist() == [1, 2, 3, 4]  # test history includes the validation event


def test_no_training_target_is_a_test_event():
    ds = from_world(simulate(SimConfig(num_users=30, num_items=40)))
    split = leave_last_out(ds, max_history=8)
    test_pos = dict(zip(split.test.users.tolist(), split.test.positions.tolist()))
    assert all(p < test_pos[u] for u, p in zip(split.train.users.tolist(), split.train.positions.tolist()))
    assert max(len(h) for h in split.train.histories) == 8
    sub = split.train.subset([3, 0])
    assert sub.targets.tolist() == [split.train.targets[3], split.train.targets[0]]
    assert sub.journeys is not None and len(sub.journeys[0]) == len(sub.histories[0])


def test_from_world_matches_simulator_events():
    world = simulate(SimConfig(num_users=20, num_items=30))
    ds = from_world(world)
    assert ds.num_users == 20 and ds.num_items == 30 and ds.num_events == len(world.event_item)
    assert list(ds.item_attributes) == ["top_category", "leaf_category", "brand", "price_bucket"]
    items, behs, ts = world.user_history(7)
    assert ds.user_items[7].tolist() == items.tolist() and ds.user_behaviors[7].tolist() == behs.tolist()
    assert ds.user_timestamps[7].tolist() == ts.astype(float).tolist()
    assert ds.behavior_names[1:] == ("view", "add_to_cart", "remove_from_cart", "purchase")
    assert ds.item_texts[0] == "" and len(ds.item_texts) == 31


@pytest.mark.parametrize("bad, match", [
    (dict(user_items=[[0, 1]]), "item ids"),
    (dict(user_items=[[1, 7]]), "item ids"),
    (dict(user_items=[[1, 2]], behaviors=[[1, 2]]), "behaviour ids"),
])
def test_validation_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(bad["user_items"], bad.get("behaviors"))


def test_rejects_unsorted_timestamps_and_bad_args():
    ds = tiny([[1, 2]])
    with pytest.raises(ValueError, match="chronological"):
        SequenceDataset(name="x", num_items=6, item_attributes=ds.item_attributes, item_texts=ds.item_texts,
                        user_items=ds.user_items, user_behaviors=ds.user_behaviors,
                        user_timestamps=[np.array([5.0, 1.0])])
    with pytest.raises(ValueError, match="max_history"):
        leave_last_out(ds, max_history=0)
    with pytest.raises(ValueError, match="no user"):
        leave_last_out(tiny([[1], [2]]), max_history=3)


def test_pad_left_keeps_newest():
    out = pad_left([np.array([1, 2, 3]), np.array([], np.int64), np.array([4])], 2)
    assert out.tolist() == [[2, 3], [0, 0], [0, 4]]
    with pytest.raises(ValueError, match="length"):
        pad_left([np.array([1])], 0)


def test_time_split_never_trains_on_the_test_period():
    from data.sequences import time_split

    ds = SequenceDataset(
        name="t", num_items=6, item_attributes={"c": np.arange(7) % 2}, item_texts=[""] * 7,
        user_items=[np.array([1, 2, 3, 4, 5]), np.array([2, 3, 4]), np.array([6, 1])],
        user_behaviors=[np.ones(5, np.int64), np.ones(3, np.int64), np.ones(2, np.int64)],
        user_timestamps=[np.array([0.0, 1, 2, 8, 9]), np.array([3.0, 6, 7]), np.array([4.0, 5])])
    split = time_split(ds, max_history=10, test_quantile=0.7, valid_quantile=0.5)
    # All times: 0..9 (10 events); cuts at the 0.5 and 0.7 quantiles: 4.5 and 6.3.
    assert split.test.users.tolist() == [0, 1] and split.test.targets.tolist() == [4, 4]
    assert split.test.histories[1].tolist() == [2, 3]
    assert split.valid.users.tolist() == [1, 2] and split.valid.targets.tolist() == [3, 1]
    # Before 4.5: user 0's events at 0, 1, 2 (targets 2 and 3), user 1's first (no target), user 2's first.
    assert (split.train.target_timestamps < 4.5).all() and split.train.targets.tolist() == [2, 3]
