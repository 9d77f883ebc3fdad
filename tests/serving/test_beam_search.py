"""Unit tests of the trie-constrained beam search with synthetic step functions (no model)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from data.simulator import SimConfig, simulate
from serving.grace.beam_search import constrained_beam_search
from serving.grace.tokenizer import BOS, PATH_LENGTH, ItemTokenizer


@pytest.fixture(scope="module")
def tok() -> ItemTokenizer:
    cat = simulate(SimConfig(num_items=200, num_users=120)).catalog
    return ItemTokenizer.from_catalog(cat.top_category, cat.leaf_category, cat.brand, cat.price_bucket)


@pytest.fixture(scope="module")
def trie(tok):
    return tok.build_trie()


@pytest.fixture(scope="module")
def p2i(tok):
    return tok.path_to_item()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def random_log_probs(vocab: int, seed: int):
    """A deterministic function prefix(tuple, starting with BOS) -> log-probs [V]."""

    def f(prefix: tuple[int, ...]) -> np.ndarray:
        key = zlib.crc32(np.asarray(prefix, np.int64).tobytes()) ^ seed
        return _log_softmax(3.0 * np.random.default_rng(key).normal(size=vocab)).astype(np.float32)

    return f


def make_step(f, calls: list | None = None):
    previous: list[np.ndarray] = []

    def step(prefix: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
        assert prefix.ndim == 2 and prefix.dtype == np.int64
        assert np.all(prefix[:, 0] == BOS)
        # The parents protocol a KV-cached decoder relies on: beam i extends row parents[i] of the last call.
        if parents is None:
            assert prefix.shape[1] == 1 and not previous
        else:
            np.testing.assert_array_equal(prefix[:, :-1], previous[-1][parents])
        previous.append(prefix.copy())
        if calls is not None:
            calls.append(prefix.copy())
        return np.stack([f(tuple(row)) for row in prefix.tolist()])

    return step


def path_score(f, path) -> float:
    """Independent computation: sum of step log-probs along BOS + path."""
    prefix = (BOS,)
    total = 0.0
    for t in path:
        total += float(f(prefix)[t])
        prefix = prefix + (int(t),)
    return total


def _check_result(items, scores, tok, beam_width):
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert len(items) == len(scores) <= beam_width
    assert len(items) == min(beam_width, tok.num_items)  # enough real items: the beam is always full
    assert np.all((items >= 1) & (items <= tok.num_items))
    assert len(np.unique(items)) == len(items)
    assert np.all(np.diff(scores) <= 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beam_width", [1, 5, 20])
def test_random_step_gives_real_unique_sorted_items_with_exact_scores(tok, trie, p2i, seed, beam_width):
    f = random_log_probs(tok.vocab_size, seed)
    calls: list = []
    items, scores = constrained_beam_search(make_step(f, calls), trie, p2i, beam_width)
    _check_result(items, scores, tok, beam_width)
    for item, score in zip(items.tolist(), scores.tolist()):
        assert score == pytest.approx(path_score(f, tok.item_paths[item]), abs=1e-4)
    # One call per path level, with growing prefixes and at most beam_width beams.
    assert len(calls) == PATH_LENGTH
    for depth, prefix in enumerate(calls):
        assert prefix.shape[1] == depth + 1 and 1 <= len(prefix) <= beam_width
    assert len(calls[0]) == 1


def test_wide_beam_is_exhaustive_and_matches_brute_force(tok, trie, p2i):
    f = random_log_probs(tok.vocab_size, seed=7)
    items, scores = constrained_beam_search(make_step(f), trie, p2i, beam_width=tok.num_items + 50)
    _check_result(items, scores, tok, tok.num_items + 50)
    brute = np.array([path_score(f, tok.item_paths[i]) for i in range(1, tok.num_items + 1)])
    np.testing.assert_allclose(np.sort(scores)[::-1], np.sort(brute)[::-1], atol=1e-4)
    assert items[0] == 1 + int(np.argmax(brute))
    # Exhaustive search: the first ten results are exactly the ten best paths.
    top10 = set((1 + np.argsort(-brute)[:10]).tolist())
    assert set(items[:10].tolist()) == top10


def test_adversarial_mass_off_trie_still_gives_real_items(tok, trie, p2i):
    """Nearly all probability on tokens no real path allows at that prefix."""
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(PATH_LENGTH + 1, tok.vocab_size))

    def f(prefix):
        depth = len(prefix) - 1
        logits = np.full(tok.vocab_size, 20.0) + noise[depth]
        logits[trie[prefix[1:]]] = -20.0 + noise[depth, trie[prefix[1:]]]
        return _log_softmax(logits).astype(np.float32)

    for beam_width in (1, 8, 40):
        items, scores = constrained_beam_search(make_step(f), trie, p2i, beam_width)
        _check_result(items, scores, tok, beam_width)
        assert np.all(scores < -150)  # only low-mass (allowed) tokens were taken
        for item, score in zip(items.tolist(), scores.tolist()):
            assert score == pytest.approx(path_score(f, tok.item_paths[item]), rel=1e-5)


def test_adversarial_infinite_mass_off_trie(tok, trie, p2i):
    """+inf (then large) scores outside the trie, uniform inside: still real items, all finite scores."""

    def f(prefix):
        out = np.zeros(tok.vocab_size, np.float32)
        out[trie[prefix[1:]]] = -1.0
        mask = np.ones(tok.vocab_size, bool)
        mask[trie[prefix[1:]]] = False
        out[mask] = np.inf if prefix == (BOS,) else 5.0  # "better" than any allowed token
        return out

    items, scores = constrained_beam_search(make_step(f), trie, p2i, beam_width=10)
    _check_result(items, scores, tok, 10)
    np.testing.assert_allclose(scores, -float(PATH_LENGTH))


@pytest.mark.parametrize("target", [1, 17, 123, 200])
def test_peaked_step_ranks_target_first(tok, trie, p2i, target):
    path = tok.item_paths[target].tolist()
    base = random_log_probs(tok.vocab_size, seed=target)

    def f(prefix):
        depth = len(prefix) - 1
        logits = base(prefix).astype(np.float64)
        if list(prefix[1:]) == path[:depth]:
            logits[path[depth]] += 30.0  # all mass on the target's next token
        return _log_softmax(logits).astype(np.float32)

    for beam_width in (1, 4, 20):
        items, scores = constrained_beam_search(make_step(f), trie, p2i, beam_width)
        _check_result(items, scores, tok, beam_width)
        assert items[0] == target
        assert scores[0] == pytest.approx(0.0, abs=1e-3)
        if beam_width > 1:
            assert scores[1] < scores[0] - 10


def test_ties_are_broken_deterministically(tok, trie, p2i):
    """Uniform log-probs: every path ties; the result must not depend on anything but the trie."""

    def f(prefix):
        return np.full(tok.vocab_size, -np.log(tok.vocab_size), np.float32)

    a = constrained_beam_search(make_step(f), trie, p2i, beam_width=12)
    b = constrained_beam_search(make_step(f), trie, p2i, beam_width=12)
    np.testing.assert_array_equal(a[0], b[0])
    _check_result(*a, tok, 12)
    # Stable ties in trie order: the lexicographically smallest paths win.
    smallest = sorted(map(tuple, tok.item_paths[1:].tolist()))[:12]
    assert sorted(map(tuple, tok.item_paths[a[0]].tolist())) == smallest


def test_excluded_items_never_complete_and_free_their_beams(tok, trie, p2i):
    f = random_log_probs(tok.vocab_size, seed=3)
    items, _ = constrained_beam_search(make_step(f), trie, p2i, beam_width=10)
    exclude = set(items[:4].tolist())
    again, scores = constrained_beam_search(make_step(f), trie, p2i, beam_width=10, exclude=exclude)
    assert not exclude & set(again.tolist()) and len(again) == 10
    assert set(items[4:].tolist()) <= set(again.tolist())  # the survivors keep their place; others fill in
    assert np.all(np.diff(scores) <= 0)


def batched_run(fs: list):
    """A fake KV-cached decoder for batched_beam_search: the 'cache' holds each row's tokens so far, and a row's
    log-probs are its request's function of its prefix (request = row // slots)."""
    calls = []

    def run(last: np.ndarray, past: np.ndarray):
        present = np.concatenate([past, last.astype(np.float32)[None, None, :, None, None, None]], axis=4)
        slots = len(last) // len(fs)
        calls.append(len(last))
        rows = [tuple(int(t) for t in present[0, 0, row, 0, :, 0]) for row in range(len(last))]
        return np.stack([fs[row // slots](prefix) for row, prefix in enumerate(rows)]), present

    return run, calls


@pytest.mark.parametrize("beam_width", [1, 5, 20])
def test_batched_trie_normalized_search_equals_the_normalized_one_request_search(tok, trie, p2i, beam_width):
    """A model trained with trie_loss is searched with each beam's step renormalised over its trie children: the
    batched search's segmented logsumexp gives per request what TrieNormalizedStep gives the one-request search,
    and (the scores being log-probabilities over children) each item's score is its path's log-probability."""
    from serving.grace.beam_search import TrieIndex, TrieNormalizedStep, batched_beam_search

    index = TrieIndex(trie, p2i)
    excludes = [None, set(range(1, 8)), set()]
    fs = [random_log_probs(tok.vocab_size, seed) for seed in range(len(excludes))]
    run, _ = batched_run(fs)
    got = batched_beam_search(run, np.zeros((1, 1, 1, 1, 0, 1), np.float32), index, beam_width, excludes,
                              trie_normalized=True)
    plain = batched_beam_search(batched_run(fs)[0], np.zeros((1, 1, 1, 1, 0, 1), np.float32), index, beam_width,
                                excludes)
    for f, exclude, (got_items, got_scores), (_, plain_scores) in zip(fs, excludes, got, plain):
        want_items, want_scores = constrained_beam_search(TrieNormalizedStep(make_step(f), trie), trie, p2i,
                                                          beam_width, exclude)
        np.testing.assert_array_equal(got_items, want_items)
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
        assert (got_scores <= 0).all() and not np.allclose(got_scores, plain_scores[:len(got_scores)])
    # with every item allowed and the beam wide enough for all of them, the path probabilities sum to one
    (items, scores), = batched_beam_search(batched_run(fs[:1])[0], np.zeros((1, 1, 1, 1, 0, 1), np.float32), index,
                                           len(p2i), [None], trie_normalized=True)
    assert len(items) == len(p2i) and np.exp(scores.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("beam_width", [1, 5, 20])
def test_batched_search_equals_one_search_per_request(tok, trie, p2i, beam_width):
    """Several requests at once, each with its own log-probs and exclusions (one excludes a whole subtree, one
    everything but a few items): per request the same items and scores as the one-request search, one decoder
    call per step for all of them."""
    from serving.grace.beam_search import TrieIndex, batched_beam_search

    index = TrieIndex(trie, p2i)
    items = np.arange(1, tok.num_items + 1)
    subtree = {p2i[path] for path in p2i if path[0] == next(iter(p2i))[0]}
    excludes = [None, set(items[:7].tolist()), subtree, set(items[5:].tolist()), set()]
    fs = [random_log_probs(tok.vocab_size, seed) for seed in range(len(excludes))]
    run, calls = batched_run(fs)
    got = batched_beam_search(run, np.zeros((1, 1, 1, 1, 0, 1), np.float32), index, beam_width, excludes)
    assert len(calls) == tok.path_length and calls[0] == len(excludes)
    for f, exclude, (got_items, got_scores) in zip(fs, excludes, got):
        want_items, want_scores = constrained_beam_search(make_step(f), trie, p2i, beam_width, exclude)
        np.testing.assert_array_equal(got_items, want_items)
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
        assert not (set(got_items.tolist()) & (exclude or set()))


def test_batched_search_with_everything_excluded_returns_nothing_for_that_request(tok, trie, p2i):
    from serving.grace.beam_search import TrieIndex, batched_beam_search

    fs = [random_log_probs(tok.vocab_size, 0), random_log_probs(tok.vocab_size, 1)]
    run, _ = batched_run(fs)
    everything = set(range(1, tok.num_items + 1))
    (a, _), (b, _) = batched_beam_search(run, np.zeros((1, 1, 1, 1, 0, 1), np.float32), TrieIndex(trie, p2i), 4,
                                         [everything, None])
    assert len(a) == 0 and len(b) == 4


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_popularity_prior_adds_weight_times_log_prior_to_every_path(tok, trie, p2i, weight):
    """PriorStep spreads weight x log p_prior(item) over the path (ratios of prefix masses): with a wide beam
    each item's score is its path score plus exactly that; the batched search's edge_bias (TrieIndex.edge_prior)
    finds the same items and scores; a heavy prior ranks by the prior."""
    from serving.grace.beam_search import (PriorStep, TrieIndex, TrieNormalizedStep, batched_beam_search,
                                           prefix_log_mass)

    rng = np.random.default_rng(0)
    weights = rng.integers(1, 50, tok.num_items + 1).astype(np.float64)
    log_mass = prefix_log_mass(p2i, weights)
    assert log_mass[()] == pytest.approx(np.log(weights[1:].sum()))
    prior = PriorStep(None, trie, log_mass, weight)
    f = random_log_probs(tok.vocab_size, 3)
    wide = tok.num_items
    items, scores = constrained_beam_search(prior.over(make_step(f)), trie, p2i, wide)
    log_prior = np.log(weights / weights[1:].sum())
    for item, score in zip(items.tolist(), scores.tolist()):
        assert score == pytest.approx(path_score(f, tok.item_paths[item]) + weight * log_prior[item], abs=1e-4)
    assert prior.step is None  # over() leaves the shared prior untouched
    index = TrieIndex(trie, p2i)
    for beam_width, exclude in ((5, None), (20, set(range(1, 30)))):
        want = constrained_beam_search(prior.over(TrieNormalizedStep(make_step(f), trie)), trie, p2i, beam_width,
                                       exclude)
        (got,) = batched_beam_search(batched_run([f])[0], np.zeros((1, 1, 1, 1, 0, 1), np.float32), index,
                                     beam_width, [exclude], trie_normalized=True,
                                     edge_bias=index.edge_prior(weights, weight))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    heavy = PriorStep(None, trie, log_mass, 1e6)  # a wide beam then ranks by the prior alone
    top, _ = constrained_beam_search(heavy.over(make_step(f)), trie, p2i, wide)
    assert (np.diff(weights[top]) <= 0).all()


@pytest.mark.parametrize("trie_normalized", [False, True])
def test_score_paths_gives_each_candidate_the_score_the_search_gives_its_path(tok, trie, p2i, trie_normalized):
    """Teacher-forced scoring (what the popularity prior's candidates get): per request, lists of different
    lengths, each item scored as a catalog-wide batched search scores it, prior included."""
    from serving.grace.beam_search import TrieIndex, batched_beam_search, score_paths, top_prior_items

    index = TrieIndex(trie, p2i)
    weights = np.random.default_rng(1).integers(1, 50, tok.num_items + 1).astype(np.float64)
    bias = index.edge_prior(weights, 2.0)
    fs = [random_log_probs(tok.vocab_size, seed) for seed in (5, 6, 7)]
    wide = batched_beam_search(batched_run(fs)[0], np.zeros((1, 1, 1, 1, 0, 1), np.float32), index, tok.num_items,
                               [None] * 3, trie_normalized=trie_normalized, edge_bias=bias)
    want = [dict(zip(items.tolist(), scores.tolist())) for items, scores in wide]
    candidates = [np.array([3, 1, 150], np.int64), np.array([7], np.int64), top_prior_items(weights, p2i, 9)]
    got = score_paths(batched_run(fs)[0], np.zeros((1, 1, 1, 1, 0, 1), np.float32), index, candidates,
                      trie_normalized=trie_normalized, edge_bias=bias)
    for items, scores, table in zip(candidates, got, want):
        assert scores.shape == items.shape
        np.testing.assert_allclose(scores, [table[i] for i in items.tolist()], rtol=1e-5)


def test_top_prior_items_are_the_heaviest_catalog_items_ties_to_the_smaller_id(p2i):
    from serving.grace.beam_search import top_prior_items

    weights = np.ones(len(p2i) + 1)
    weights[[9, 4, 30]] = [5.0, 7.0, 5.0]
    weights[0] = 1e9  # index 0 is no item
    assert top_prior_items(weights, p2i, 4).tolist() == [4, 9, 30, 1]
