"""Unit tests of the request-level numpy steps: validation/features, eligibility, kNN, merge, top-k."""

from __future__ import annotations

import numpy as np
import pytest

from data.simulator import SimConfig, simulate
from serving.catalog import ItemIds
from serving.recommend import calibrated_top_k, eligible_mask, merge_candidates, validate_and_featurize

# Sources are indexed in the order they are passed to the merge (the graph's order when served).
GRACE_SOURCE, KNN_SOURCE = 0, 1
TWO_SOURCES = ("grace", "embedding_knn")
from serving.contract import RequestError, ServingLimits
from serving.grace.history import HistoryEncoder
from serving.grace.journeys import segment_journeys
from serving.grace.tokenizer import ItemTokenizer

N_ITEMS = 200
LIMITS = ServingLimits(num_items=N_ITEMS, num_categories=8, max_history=10, max_k=5, max_exclude=20)
CATALOG = ItemIds(np.arange(N_ITEMS + 1))  # the dataset's ids are 1..N here


@pytest.fixture(scope="module")
def catalog():
    return simulate(SimConfig(num_items=N_ITEMS, num_users=120)).catalog


@pytest.fixture(scope="module")
def tok(catalog) -> HistoryEncoder:
    tokenizer = ItemTokenizer.from_catalog(catalog.top_category, catalog.leaf_category, catalog.brand,
                                           catalog.price_bucket)
    return HistoryEncoder(tokenizer, catalog.leaf_category.astype(np.int64), max_gap=120.0)


def request(**over):
    req = dict(item_ids=np.array([5, 9, 5], np.int64), behaviors=np.array([1, 2, 4], np.int32),
               timestamps=np.array([100, 100, 250], np.int64), k=np.array([3], np.int32),
               exclude_item_ids=None, category_ids=None)
    req.update(over)
    return req


# ---------------------------------------------------------------- validate_and_featurize


def test_featurize_happy_path(tok):
    f = validate_and_featurize(tok, LIMITS, CATALOG, **request())
    assert f.hist_items.shape == f.hist_behaviors.shape == (LIMITS.max_history,)
    assert f.hist_items.dtype == f.hist_behaviors.dtype == f.enc_tokens.dtype == np.int64
    np.testing.assert_array_equal(f.hist_items, [0] * 7 + [5, 9, 5])  # right-aligned, newest last
    np.testing.assert_array_equal(f.hist_behaviors, [0] * 7 + [1, 2, 4])
    tpe = tok.tokenizer.tokens_per_event
    assert f.enc_tokens.shape == f.enc_journey_ids.shape == f.enc_journey_pos.shape == (3 * tpe,)
    np.testing.assert_array_equal(f.enc_tokens, tok.tokenizer.event_tokens(np.array([5, 9, 5]), np.array([1, 2, 4])))
    # Journeys per event, repeated over the event's tokens; the 150 s pause (> max_gap 120) starts a new one.
    journeys = segment_journeys(tok.item_intent[[5, 9, 5]], np.array([100.0, 100.0, 250.0]), max_gap=120.0)
    assert journeys[2] == journeys[1] + 1
    np.testing.assert_array_equal(f.enc_journey_ids, np.repeat(journeys, tpe))
    assert f.enc_journey_pos[0] == 0 and f.enc_journey_pos[2 * tpe] == 0 and np.all(f.enc_journey_pos >= 0)
    np.testing.assert_array_equal(f.exclude_ids, [0])
    np.testing.assert_array_equal(f.allowed_categories, np.arange(LIMITS.num_categories))


def test_featurize_full_history_and_optional_inputs(tok):
    n = LIMITS.max_history
    items = np.arange(1, n + 1, dtype=np.int64)
    f = validate_and_featurize(tok, LIMITS, CATALOG, **request(
        item_ids=items, behaviors=np.ones(n, np.int64), timestamps=np.arange(n, dtype=np.int64),
        k=np.array([LIMITS.max_k]), exclude_item_ids=np.array([7, 3, 7, N_ITEMS], np.int64),
        category_ids=np.array([2, 0, 2], np.int32)))
    np.testing.assert_array_equal(f.hist_items, items)
    np.testing.assert_array_equal(f.exclude_ids, [0, 3, 7, N_ITEMS])  # sorted, unique, with padding
    np.testing.assert_array_equal(f.allowed_categories, [0, 2])
    assert f.exclude_ids.dtype == f.allowed_categories.dtype == np.int64
    # Unsigned and 2-D ([1, L], as Triton hands over with batch) inputs are accepted too.
    g = validate_and_featurize(tok, LIMITS, CATALOG, **request(item_ids=np.array([[5, 9, 5]], np.uint32)))
    np.testing.assert_array_equal(g.hist_items[-3:], [5, 9, 5])
    # k=1 and a single event are within limits.
    validate_and_featurize(tok, LIMITS, CATALOG, **request(item_ids=np.array([N_ITEMS]), behaviors=np.array([3]),
                                                  timestamps=np.array([0]), k=np.array([1])))


def _error(tok, **over) -> RequestError:
    with pytest.raises(RequestError) as info:
        validate_and_featurize(tok, LIMITS, CATALOG, **request(**over))
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize("over, field, needle", [
    (dict(item_ids=np.zeros(0, np.int64), behaviors=np.zeros(0, np.int32), timestamps=np.zeros(0, np.int64)),
     "item_ids", "at least 1"),
    (dict(item_ids=np.ones(11, np.int64), behaviors=np.ones(11, np.int32), timestamps=np.arange(11)),
     "item_ids", "maximum is 10"),
    (dict(behaviors=np.array([1, 2], np.int32)), "behaviors/timestamps", "(3)"),
    (dict(timestamps=np.array([1, 2, 3, 4], np.int64)), "behaviors/timestamps", "timestamps=4"),
    (dict(item_ids=np.array([5, 0, 5])), "item_ids", f"unknown item id 0; not one of the {N_ITEMS} items"),
    (dict(item_ids=np.array([5, N_ITEMS + 1, 5])), "item_ids", f"unknown item id {N_ITEMS + 1}"),
    (dict(item_ids=np.array([-3, 1, 5])), "item_ids", "unknown item id -3"),
    (dict(behaviors=np.array([1, 0, 1])), "behaviors", "1..4 (1=view, 2=add_to_cart, 3=remove_from_cart, 4=purchase)"),
    (dict(behaviors=np.array([1, 5, 1])), "behaviors", "unknown behavior 5"),
    (dict(timestamps=np.array([100, 99, 250])), "timestamps", "non-decreasing"),
    (dict(k=np.array([0])), "k", f"1..{LIMITS.max_k}"),
    (dict(k=np.array([LIMITS.max_k + 1])), "k", f"1..{LIMITS.max_k}"),
    (dict(k=np.array([1, 2])), "k", "exactly one"),
    (dict(exclude_item_ids=np.arange(1, LIMITS.max_exclude + 2)), "exclude_item_ids",
     f"maximum is {LIMITS.max_exclude}"),
    (dict(exclude_item_ids=np.array([3, N_ITEMS + 1])), "exclude_item_ids", f"unknown item id {N_ITEMS + 1}"),
    (dict(exclude_item_ids=np.array([0])), "exclude_item_ids", "unknown item id 0"),
    (dict(category_ids=np.zeros(0, np.int32)), "category_ids", "empty"),
    (dict(category_ids=np.array([1, LIMITS.num_categories])), "category_ids", f"0..{LIMITS.num_categories - 1}"),
    (dict(category_ids=np.array([-1])), "category_ids", f"0..{LIMITS.num_categories - 1}"),
    (dict(category_ids=np.zeros(200_000, np.int32)), "category_ids", f"maximum is {LIMITS.num_categories}"),
    (dict(timestamps=np.array([-5, 1, 2])), "timestamps", "valid range is 0..4102444800"),
    (dict(timestamps=np.array([1, 2, np.iinfo(np.int64).max])), "timestamps", "out of range"),
    (dict(item_ids=np.array([5.0, 9.0, 5.0])), "item_ids", "float64"),
    (dict(behaviors=np.array([1.0, 2.0, 4.0], np.float32)), "behaviors", "float32"),
    (dict(timestamps=np.array([1.0, 2.0, 3.0])), "timestamps", "integer"),
    (dict(exclude_item_ids=np.array([3.0])), "exclude_item_ids", "integer"),
    (dict(category_ids=np.array([1.0])), "category_ids", "integer"),
])
def test_featurize_errors_name_field_and_limit(tok, over, field, needle):
    err = _error(tok, **over)
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    assert needle in str(err), str(err)


def test_exclude_at_limit_is_accepted(tok):
    ex = np.arange(1, LIMITS.max_exclude + 1)
    f = validate_and_featurize(tok, LIMITS, CATALOG, **request(exclude_item_ids=ex))
    np.testing.assert_array_equal(f.exclude_ids, np.r_[0, ex])


# ---------------------------------------------------------------- eligibility and retrieval


def test_eligible_mask(catalog):
    top = catalog.top_category
    m = eligible_mask(top, np.array([0], np.int64), np.arange(8))
    assert m.dtype == bool and m.shape == (N_ITEMS + 1,)
    assert not m[0] and m[1:].all()
    m = eligible_mask(top, np.array([0, 4, 9], np.int64), np.array([2, 5]))
    expected = np.isin(top, [2, 5])
    expected[[0, 4, 9]] = False
    np.testing.assert_array_equal(m, expected)
    assert m.sum() > 0 and m.sum() < N_ITEMS
    # The padding item is never eligible, even when its (zero) category is allowed.
    assert top[0] == 0 and not eligible_mask(top, np.zeros(1, np.int64), np.array([0]))[0]


# ---------------------------------------------------------------- merge and top-k


def test_merge_dedupes_grace_first_filters_and_pads():
    eligible = np.ones(21, bool)
    eligible[[0, 6, 13]] = False
    grace = np.array([5, 6, 9, 5, 0, 2], np.int64)  # 6 ineligible, 5 duplicated, 0 padding
    knn = np.array([9, 13, 1, 2, 17], np.int64)  # 9/2 already from GRACE, 13 ineligible
    cand, src = merge_candidates([grace, knn], eligible, max_candidates=8)
    assert cand.shape == src.shape == (8,)
    assert cand.dtype == np.int64 and src.dtype == np.int32
    np.testing.assert_array_equal(cand, [5, 9, 2, 1, 17, 0, 0, 0])
    np.testing.assert_array_equal(src, [GRACE_SOURCE] * 3 + [KNN_SOURCE] * 2 + [-1] * 3)


def test_merge_truncates_to_max_candidates():
    eligible = np.ones(50, bool)
    eligible[0] = False
    cand, src = merge_candidates([np.arange(1, 11), np.arange(20, 40)], eligible, max_candidates=12)
    np.testing.assert_array_equal(cand, list(range(1, 11)) + [20, 21])
    np.testing.assert_array_equal(src, [GRACE_SOURCE] * 10 + [KNN_SOURCE] * 2)
    cand, src = merge_candidates([np.zeros(0, np.int64), np.zeros(0, np.int64)], eligible, max_candidates=3)
    np.testing.assert_array_equal(cand, [0, 0, 0])
    np.testing.assert_array_equal(src, [-1, -1, -1])


def test_merge_takes_any_number_of_sources_in_order():
    eligible = np.ones(30, bool)
    eligible[0] = False
    sources = [np.array([3, 4], np.int64), np.array([4, 7, 8], np.int64), np.zeros(0, np.int64),
               np.array([8, 9, 3, 10], np.int64)]
    cand, src = merge_candidates(sources, eligible, max_candidates=7)
    np.testing.assert_array_equal(cand, [3, 4, 7, 8, 9, 10, 0])
    np.testing.assert_array_equal(src, [0, 0, 1, 1, 3, 3, -1])  # a duplicate is credited to the first source
    cand, src = merge_candidates([np.array([5, 6], np.int64)], eligible, max_candidates=2)
    np.testing.assert_array_equal(src, [0, 0])


def _plateau(logits):
    """A monotone calibration with plateaus (like isotonic regression)."""
    return np.clip(np.floor(np.asarray(logits) + 2) / 4, 0.0, 1.0).astype(np.float32)


def test_calibrated_top_k_orders_by_relevance_then_pctr_and_drops_padding():
    cand = np.array([11, 12, 13, 14, 15, 0, 0], np.int64)
    src = np.array([0, 1, 0, 1, 0, -1, -1], np.int32)
    logits = np.array([0.2, 1.5, 0.7, 0.7, -1.5, 9.0, 9.0], np.float32)  # padding has the largest logits
    relevance = np.array([3.0, 1.0, 2.0, 2.0, 2.0, 9.0, 9.0], np.float32)
    items, pctr, names = calibrated_top_k(logits, relevance, cand, src, _plateau, 10, TWO_SOURCES)
    # relevance: 11 first; 13, 14, 15 tie -> by pctr (13, 14: 0.5 plateau, then id; 15: 0.0); 12 last.
    np.testing.assert_array_equal(items, [11, 13, 14, 15, 12])
    np.testing.assert_allclose(pctr, [0.5, 0.5, 0.5, 0.0, 0.75])  # each item keeps its own calibrated pCTR
    assert pctr.dtype == np.float32
    assert names.tolist() == [b"grace", b"grace", b"embedding_knn", b"grace", b"embedding_knn"]
    items3, pctr3, names3 = calibrated_top_k(logits, relevance, cand, src, _plateau, 3, TWO_SOURCES)
    np.testing.assert_array_equal(items3, items[:3])
    assert len(pctr3) == len(names3) == 3


def test_calibrated_top_k_all_padding():
    items, pctr, names = calibrated_top_k(np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.int64),
                                          np.full(4, -1, np.int32), _plateau, 2, TWO_SOURCES)
    assert len(items) == len(pctr) == len(names) == 0


def test_limits_json_round_trip():
    assert ServingLimits.from_json(LIMITS.to_json()) == LIMITS


def test_sparse_dataset_ids_map_to_internal_ids_and_unknown_ids_are_named(tok):
    """A dataset's ids need not be 1..N: the request speaks them, the features the internal ids."""
    sparse = ItemIds(np.concatenate([[0], 10**12 + 7 * np.arange(1, N_ITEMS + 1)]))
    f = validate_and_featurize(tok, LIMITS, sparse, **request(item_ids=np.array([10**12 + 7 * 5, 10**12 + 7 * 9]),
                                                               behaviors=np.array([1, 4]),
                                                               timestamps=np.array([10, 20]),
                                                               exclude_item_ids=np.array([10**12 + 7 * 3])))
    assert f.hist_items[-2:].tolist() == [5, 9]
    assert 3 in f.exclude_ids.tolist()
    with pytest.raises(RequestError, match=r"item_ids: unknown item id 5; not one of the .* items"):
        validate_and_featurize(tok, LIMITS, sparse, **request(item_ids=np.array([5]), behaviors=np.array([1]),
                                                               timestamps=np.array([1])))
    with pytest.raises(RequestError, match=r"exclude_item_ids: unknown item id 1000000000006"):
        validate_and_featurize(tok, LIMITS, sparse, **request(item_ids=np.array([10**12 + 7]), behaviors=np.array([1]),
                                                               timestamps=np.array([1]),
                                                               exclude_item_ids=np.array([10**12 + 6])))


def test_a_dataset_without_repeats_never_gets_its_history_back(tok):
    """exclude_history (dataset.json "repeats": false): the history joins the exclusions, within the graph's
    exclusion length limit."""
    import dataclasses

    from serving import graph

    limits = dataclasses.replace(LIMITS, exclude_history=True)
    f = validate_and_featurize(tok, limits, CATALOG, **request(item_ids=np.array([5, 9, 5]), behaviors=np.array([1, 1, 4]),
                                                               timestamps=np.array([1, 2, 3]),
                                                               exclude_item_ids=np.array([7])))
    assert set(f.exclude_ids.tolist()) == {0, 5, 7, 9}
    assert len(validate_and_featurize(tok, LIMITS, CATALOG, **request(item_ids=np.array([5]), behaviors=np.array([1]),
                                                                       timestamps=np.array([1]))).exclude_ids) == 1
    assert graph.EXCLUDE_IDS.length_limit(limits) == limits.max_exclude + 1 + limits.max_history


def test_final_order_mixes_the_ranker_and_the_merge_order_by_rank():
    from serving.recommend import final_order

    # Candidates arrive in merge order 0..4; the ranker prefers the reverse.
    relevance = np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32)
    pctr = np.zeros(5, np.float32)
    items = np.array([10, 11, 12, 13, 14])
    assert final_order(relevance, pctr, items, 0.0).tolist() == [4, 3, 2, 1, 0]  # the ranker's order
    assert final_order(relevance, pctr, items, 1.0).tolist() == [0, 1, 2, 3, 4]  # the merge order
    # Halfway every candidate ties on the mix (rank 2): the ranker's order breaks the tie.
    assert final_order(relevance, pctr, items, 0.5).tolist() == [4, 3, 2, 1, 0]
    # Ranker order 2, 0, 4, 3, 1; half-and-half: 0 (0.5), 2 (1.0), 1 (2.5), then 4 and 3 tie at 3.0: ranker's 4 first.
    relevance = np.array([0.5, 0.1, 0.9, 0.2, 0.3], np.float32)
    assert final_order(relevance, pctr, items, 0.5).tolist() == [0, 2, 1, 4, 3]


def test_merge_weight_is_picked_by_validation_ndcg_then_hit_rate_then_the_ranker():
    from exporters.ordering import pick, score_weights

    # One user: the target is the merge order's first candidate, which the ranker puts last of 12.
    items = np.arange(1, 13)
    rows = [{"items": items, "relevance": np.arange(12, dtype=np.float32), "pctr": np.zeros(12)}]
    table = score_weights(rows, np.array([1]))
    assert table[0.0]["hr@10"] == 0.0 and table[1.0]["hr@10"] == 1.0
    assert pick(table) > 0.0 and table[pick(table)]["ndcg@10"] == max(m["ndcg@10"] for m in table.values())
    # NDCG decides before the hit rate: a weight that hits as often but ranks the target higher wins.
    assert pick({0.0: {"hr@10": 0.5, "ndcg@10": 0.30}, 0.5: {"hr@10": 0.5, "ndcg@10": 0.31},
                 1.0: {"hr@10": 0.6, "ndcg@10": 0.29}}) == 0.5
    # Target = the ranker's favourite: the ranker's order (weight 0) wins, ties go to the smallest weight.
    table = score_weights(rows, np.array([12]))
    assert pick(table) == 0.0
