"""Journey segmentation: rules on hand-made histories, token ids/positions, and recovery of the simulator's
ground-truth journeys with the default configuration."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from data.simulator import SimConfig, simulate
from serving.grace.journeys import DEFAULT_MAX_GAP, JourneyConfig, segment_journeys, token_journeys
from serving.grace.tokenizer import ItemTokenizer


def test_gap_and_category_rules():
    cats = np.array([3, 3, 3, 5, 5, 5, 5])
    ts = np.array([0, 10, 20, 30, 5000, 5010, 5010])
    np.testing.assert_array_equal(segment_journeys(cats, ts, max_gap=100), [0, 0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(segment_journeys(cats, ts, max_gap=100, split_on_category_change=False),
                                  [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(segment_journeys(cats, ts, max_gap=np.inf), [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(segment_journeys(cats, ts, max_gap=np.inf, split_on_category_change=False),
                                  np.zeros(7))
    # A gap equal to max_gap does not split; one second more does.
    assert segment_journeys(np.zeros(2), np.array([0, 100]), max_gap=100).tolist() == [0, 0]
    assert segment_journeys(np.zeros(2), np.array([0, 101]), max_gap=100).tolist() == [0, 1]
    # Returning to an earlier category is a new journey (journeys are contiguous runs).
    assert segment_journeys(np.array([1, 2, 1]), np.array([0, 1, 2]), max_gap=10).tolist() == [0, 1, 2]


def test_output_contract_and_edge_cases():
    rng = np.random.default_rng(0)
    ts = np.cumsum(rng.integers(0, 4000, size=50))
    out = segment_journeys(rng.integers(0, 3, size=50), ts, max_gap=DEFAULT_MAX_GAP)
    assert out.dtype == np.int64 and out.shape == (50,) and out[0] == 0
    assert np.all(np.diff(out) >= 0) and np.all(np.diff(out) <= 1)
    assert segment_journeys(np.zeros(0), np.zeros(0), max_gap=1.0).shape == (0,)
    assert segment_journeys(np.array([7]), np.array([3]), max_gap=1.0).tolist() == [0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(categories=np.zeros(3), timestamps=np.array([0, 5, 4]), max_gap=1.0), "nondecreasing"),
    (dict(categories=np.zeros(2), timestamps=np.array([0, 5, 6]), max_gap=1.0), "events"),
    (dict(categories=np.zeros(2), timestamps=np.array([0, 5]), max_gap=-1.0), "max_gap"),
    (dict(categories=np.zeros(2), timestamps=np.array([0, 5]), max_gap=float("nan")), "max_gap"),
    (dict(categories=np.zeros((2, 1)), timestamps=np.array([0, 5]), max_gap=1.0), "1-D"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        segment_journeys(kwargs.pop("categories"), kwargs.pop("timestamps"), **kwargs)


def test_token_journeys_ids_and_positions():
    ids, pos = token_journeys(np.array([0, 0, 1, 2, 2, 2]), tokens_per_event=3)
    assert ids.dtype == pos.dtype == np.int64
    np.testing.assert_array_equal(ids, np.repeat([0, 0, 1, 2, 2, 2], 3))
    np.testing.assert_array_equal(pos, np.r_[np.arange(6), np.arange(3), np.arange(9)])
    e_ids, e_pos = token_journeys(np.zeros(0, np.int64), 6)
    assert e_ids.shape == e_pos.shape == (0,)
    with pytest.raises(ValueError, match="tokens_per_event"):
        token_journeys(np.array([0]), 0)
    with pytest.raises(ValueError, match="nondecreasing"):
        token_journeys(np.array([0, 1, 0]), 2)


def test_token_journeys_line_up_with_event_tokens():
    world = simulate(SimConfig(num_items=120, num_users=30))
    cat = world.catalog
    tok = ItemTokenizer.from_catalog(cat.top_category, cat.leaf_category, cat.brand, cat.price_bucket)
    cfg = JourneyConfig()
    items, behs, ts = world.user_history(3)
    ej = cfg.segment(items, ts, cfg.intent_column(cat))
    tokens = tok.event_tokens(items, behs)
    jid, pos = token_journeys(ej, tok.tokens_per_event)
    assert len(jid) == len(pos) == len(tokens)
    # Every behaviour token (first of its event) carries its event's journey; positions restart at 0.
    np.testing.assert_array_equal(jid[::tok.tokens_per_event], ej)
    starts = np.flatnonzero(np.r_[True, np.diff(jid) > 0])
    assert np.all(pos[starts] == 0)
    assert np.all(tok.token_level(tokens[starts]) == -1)  # a journey starts at a behaviour token


def test_config_validation():
    with pytest.raises(ValueError, match="max_gap"):
        JourneyConfig(max_gap=-5)
    with pytest.raises(ValueError, match="no column"):
        JourneyConfig(intent="colour").intent_column(simulate(SimConfig(num_items=10, num_users=3)).catalog)
    with pytest.raises(ValueError, match="items"):
        JourneyConfig().segment(np.array([1, 99]), np.array([0, 1]), np.arange(10))


def _recovery(world, cfg: JourneyConfig) -> dict:
    """Adjusted Rand index over all events and exact-boundary precision/recall against World.event_journey."""
    bounds = np.searchsorted(world.event_user, np.arange(world.config.num_users + 1))
    col = cfg.intent_column(world.catalog)
    pred, offset, tp, n_pred, n_true = [], 0, 0, 0, 0
    for u in range(world.config.num_users):
        lo, hi = bounds[u], bounds[u + 1]
        j = cfg.segment(world.event_item[lo:hi], world.event_timestamp[lo:hi], col)
        pred.append(j + offset)
        offset += int(j.max()) + 1
        pb, tb = np.diff(j) > 0, np.diff(world.event_journey[lo:hi]) > 0
        tp, n_pred, n_true = tp + int((pb & tb).sum()), n_pred + int(pb.sum()), n_true + int(tb.sum())
    return {"ari": adjusted_rand_score(world.event_journey, np.concatenate(pred)),
            "precision": tp / max(n_pred, 1), "recall": tp / max(n_true, 1)}


def test_defaults_recover_simulator_journeys():
    world = simulate(SimConfig(num_items=300, num_users=300))
    default = _recovery(world, JourneyConfig())
    assert default["precision"] == 1.0 and default["recall"] == 1.0 and default["ari"] == pytest.approx(1.0)
    # The measurement can fail: without the time gap, consecutive journeys with the same leaf merge.
    category_only = _recovery(world, JourneyConfig(max_gap=np.inf))
    assert category_only["precision"] == 1.0 and category_only["recall"] < 0.99
    # A much too long gap without category splits merges many journeys.
    day_gap = _recovery(world, JourneyConfig(max_gap=86_400.0, split_on_category_change=False))
    assert day_gap["recall"] < 0.9 and day_gap["ari"] < 0.9
