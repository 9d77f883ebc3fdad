"""clip_retrieve: FAISS search with the request's eligibility filter, exact fallback for selective filters."""

from __future__ import annotations

import numpy as np
import pytest

from serving.clip.ann_index import IndexConfig, build_index
from evaluation.ann_sweep import clustered_vectors
from serving.clip.retrieval import clip_retrieve, history_query
from serving.clip.retrieval import BEHAVIOR_WEIGHTS, KNN_RECENCY_DECAY

N, D = 800, 16


@pytest.fixture(scope="module")
def catalog():
    emb = clustered_vectors(N, D, clusters=8, seed=0)  # unit vectors around 8 centres
    item_embeddings = np.concatenate([np.zeros((1, D), np.float32), emb]).astype(np.float32)
    ids = np.arange(1, N + 1)
    index = build_index(emb, IndexConfig(kind="ivf", nlist=16, nprobe=2), ids)
    return index, item_embeddings


def _exact(item_embeddings, hist_items, hist_behaviors, eligible, n):
    q = history_query(item_embeddings, hist_items, hist_behaviors)[0]
    ids = np.flatnonzero(eligible)
    s = item_embeddings[ids] @ q
    return ids[np.lexsort((ids, -s))[:n]]


def test_history_query_is_normalised_and_ignores_padding(catalog):
    _, emb = catalog
    q = history_query(emb, np.array([0, 0, 5, 9]), np.array([0, 0, 1, 4]))
    assert q.shape == (1, D)
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, atol=1e-5)
    np.testing.assert_allclose(q, history_query(emb, np.array([5, 9]), np.array([1, 4])), atol=1e-6)
    # Independent computation: the newest event weighs decay^0, older ones decay^age, times the behaviour weight.
    w = np.array([BEHAVIOR_WEIGHTS[1] * KNN_RECENCY_DECAY ** 2, BEHAVIOR_WEIGHTS[4] * KNN_RECENCY_DECAY,
                  BEHAVIOR_WEIGHTS[2]])
    expected = w @ emb[[3, 10, 42]]
    np.testing.assert_allclose(history_query(emb, np.array([0, 3, 10, 42]), np.array([0, 1, 4, 2]))[0],
                               expected / np.linalg.norm(expected), atol=1e-5)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.05, 0.01])
def test_only_eligible_items_and_as_many_as_asked(catalog, fraction):
    index, emb = catalog
    rng = np.random.default_rng(int(fraction * 100))
    eligible = rng.random(N + 1) < fraction
    eligible[0] = False
    hist = rng.integers(1, N + 1, size=6)
    items, scores = clip_retrieve(index, emb, hist, np.ones(6, np.int64), eligible, 20)
    assert len(items) == min(20, int(eligible.sum()))
    assert eligible[items].all() and len(set(items.tolist())) == len(items)
    assert np.all(np.diff(scores) <= 1e-6)  # best first


def test_selective_filter_far_from_history_falls_back_to_exact(catalog):
    """The history sits in one cluster; only items of far clusters are eligible, which the probed IVF lists
    do not hold: the answer must still be the exact top-n of the eligible items, never empty."""
    index, emb = catalog
    q_item = 1
    sims = emb[1:] @ emb[q_item]
    eligible = np.r_[False, sims < np.quantile(sims, 0.2)]
    items, _ = clip_retrieve(index, emb, np.array([q_item]), np.array([1]), eligible, 10)
    np.testing.assert_array_equal(items, _exact(emb, np.array([q_item]), np.array([1]), eligible, 10))


def test_nothing_eligible_gives_empty(catalog):
    index, emb = catalog
    items, scores = clip_retrieve(index, emb, np.array([3]), np.array([1]), np.zeros(N + 1, bool), 10)
    assert len(items) == len(scores) == 0


def test_index_path_breaks_ties_by_item_id():
    """Every eligible item scores the same and the index fills n itself: ids come out ascending, in order."""
    emb = np.zeros((11, 2), np.float32)
    emb[1:] = [1.0, 0.0]
    index = build_index(emb[1:], IndexConfig(kind="flat"), np.arange(1, 11))
    eligible = np.zeros(11, bool)
    eligible[[9, 3, 7, 5]] = True
    items, scores = clip_retrieve(index, emb, np.array([2]), np.array([1]), eligible, 4)
    assert items.tolist() == [3, 5, 7, 9] and np.all(scores == scores[0])


def test_exact_fallback_breaks_ties_by_item_id():
    """The probed IVF list holds no eligible item, so only the exact fallback can answer; its ties (every eligible
    item scores the same) come out by ascending id, like the index path's."""
    emb = np.zeros((21, 2), np.float32)
    emb[1:11] = [1.0, 0.0]  # cluster A: the history's side
    emb[11:] = [0.0, 1.0]  # cluster B: the eligible items, all tied against the query
    index = build_index(emb[1:], IndexConfig(kind="ivf", nlist=2, nprobe=1), np.arange(1, 21))
    eligible = np.zeros(21, bool)
    eligible[[19, 12, 16, 14]] = True
    probed = index.search(emb[[2]], 10)[1][0]
    assert not set(probed.tolist()) & {12, 14, 16, 19}  # the index alone cannot return them
    items, scores = clip_retrieve(index, emb, np.array([2]), np.array([1]), eligible, 4)
    assert items.tolist() == [12, 14, 16, 19] and np.all(scores == scores[0])
