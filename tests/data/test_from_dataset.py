"""A dataset of the contract as a SequenceDataset (what the harness and, next, the build train on)."""

from __future__ import annotations

import numpy as np

from data.dataset import load_dataset
from data.sequences import from_dataset, leave_last_out
from tests.data.fixture_dataset import write_fixture


def test_fixture_becomes_a_sequence_dataset_with_its_own_ids(tmp_path):
    ds = load_dataset(write_fixture(tmp_path / "shop"))
    seq = from_dataset(ds)
    assert seq.num_items == len(ds.items)
    # Internal ids 1..N in the order of the shop's own (sparse) ids, which are kept.
    np.testing.assert_array_equal(seq.external_item_ids[1:], np.sort(ds.items["item_id"].to_numpy()))
    assert seq.external_item_ids[0] == 0
    # Every event is kept, per user, in time order, with the vocabulary's behaviour codes.
    assert seq.num_events == len(ds.events)
    assert seq.num_users == ds.events["user_id"].nunique()
    assert seq.behavior_names[1:] == tuple(ds.meta.events)
    external = seq.external_item_ids
    first_user = ds.events["user_id"].iloc[0]
    rows = ds.events[ds.events["user_id"] == first_user]
    np.testing.assert_array_equal(external[seq.user_items[0]], rows["item_id"].to_numpy())
    np.testing.assert_array_equal(seq.user_behaviors[0], rows["behavior"].to_numpy())


def test_category_levels_are_prefixes_and_texts_carry_the_content(tmp_path):
    ds = load_dataset(write_fixture(tmp_path / "shop"))
    seq = from_dataset(ds)
    depth = max(len(levels) for levels in ds.category_levels())
    assert [k for k in seq.item_attributes if k.startswith("category_")] == [f"category_{i + 1}" for i in range(depth)]
    by_id = ds.items.set_index("item_id")
    for internal in range(1, seq.num_items + 1):
        row = by_id.loc[seq.external_item_ids[internal]]
        assert row["title"] in seq.item_texts[internal] and row["category"] in seq.item_texts[internal]
    # Two items share a deepest-level code only when they share the whole path.
    deepest = seq.item_attributes[f"category_{depth}"]
    paths = {}
    for internal in range(1, seq.num_items + 1):
        path = by_id.loc[seq.external_item_ids[internal], "category"]
        assert paths.setdefault(int(deepest[internal]), path) == path


def test_leave_last_out_runs_on_it(tmp_path):
    seq = from_dataset(load_dataset(write_fixture(tmp_path / "shop")))
    split = leave_last_out(seq, max_history=5)
    assert len(split.test) == sum(len(u) >= 2 for u in seq.user_items)
