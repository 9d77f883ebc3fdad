"""Collaborative item embeddings for semantic IDs: items consumed together end up close, never-seen items are
zero, and the result is deterministic."""

import numpy as np

from models.grace.collaborative import cooccurrence_embeddings


def test_items_consumed_together_are_closer_than_items_never_together():
    rng = np.random.default_rng(0)
    # Two tastes: users of taste A watch items 1..10, of taste B items 11..20; item 21 is never seen.
    sequences = [rng.choice(np.arange(1, 11), 8) for _ in range(60)] + \
                [rng.choice(np.arange(11, 21), 8) for _ in range(60)]
    emb = cooccurrence_embeddings(sequences, num_items=21, dim=8, window=3, seed=0)
    assert emb.shape == (21, 8) and emb.dtype == np.float32
    sim = emb @ emb.T
    within = np.mean([sim[i, j] for i in range(10) for j in range(10) if i != j])
    across = np.mean([sim[i, j] for i in range(10) for j in range(10, 20)])
    assert within > across + 0.5, (within, across)
    assert not emb[20].any()  # item 21 has no training events
    np.testing.assert_array_equal(emb, cooccurrence_embeddings(sequences, num_items=21, dim=8, window=3, seed=0))


def test_no_cooccurrence_gives_zero_vectors():
    assert not cooccurrence_embeddings([np.array([3])], num_items=5, dim=4).any()
