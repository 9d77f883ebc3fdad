"""The popularity prior of GRACE's retrieval: its weight is chosen on validation among the configured ones (ties
to the smaller), a preset weight is reused without validation (a refit), and it changes what is retrieved."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from data.sequences import leave_last_out, training_counts
from evaluation.evaluate import load_dataset
from models.budget import TrainingBudget
from models.grace.recommender import GraceRecommender, GraceTrainConfig

BUDGET = TrainingBudget(epochs=1, max_examples_per_epoch=None, batch_size=32, lr=3e-3, patience=1, eval_users=0)


@pytest.fixture(scope="module")
def data():
    dataset = load_dataset("sim", sim_users=50, sim_items=40)
    return dataset, leave_last_out(dataset, 10, validation=True)


def _fit(data, preset=None, valid=True, **cfg):
    dataset, split = data
    torch.manual_seed(0)
    rec = GraceRecommender("grace_nocot", dataclasses.replace(GraceTrainConfig(max_history=10), **cfg),
                           cache_dir=None, progress=False)
    rec.preset = preset or {}
    rec.fit(dataset, split.train, seed=0, budget=BUDGET if valid else dataclasses.replace(BUDGET, patience=0),
            valid=split.valid if valid else None)
    return rec


def test_the_weight_is_chosen_on_validation_and_reused_by_a_refit(data):
    dataset, split = data
    weights = (0.0, 1.0, 1e4)
    rec = _fit(data, popularity_prior_days=1e4, popularity_prior_weights=weights)
    by_weight = {float(w): v for w, v in rec.info["valid_hr@10_by_prior_weight"].items()}
    assert set(by_weight) == set(weights)
    best = max(by_weight.values())
    assert rec.info["popularity_prior_weight"] == min(w for w, v in by_weight.items() if v == best)
    assert (rec.prior is None) == (rec.info["popularity_prior_weight"] == 0)
    # A preset weight is used as is, without validation (what evaluate --refit hands the refitted model).
    heavy = _fit(data, preset={"popularity_prior_weight": 1e4}, valid=False, popularity_prior_days=1e4,
                 beam_width=dataset.num_items)  # a beam over the whole catalog: exact
    assert heavy.info["popularity_prior_weight"] == 1e4 and "valid_hr@10_by_prior_weight" not in heavy.info
    # A prior that heavy ranks by the training counts: every user gets the most popular items first.
    counts = training_counts(dataset, split.train, 1e4)
    ranked = heavy.recommend(split.test.subset(np.arange(5)), 3)
    assert (np.diff(counts[ranked], axis=1) <= 0).all()
    assert GraceTrainConfig().popularity_prior_days == 0  # off by default


def test_the_priors_top_items_join_the_beam_and_every_candidate_is_scored_exactly(data):
    """A narrow beam under a heavy prior keeps the prefixes of most summed prior mass, which need not hold the
    single most popular items; with popularity_prior_candidates those join, scored as the search scores
    (trie-normalised path log-probability + weight x log prior), so the product ranks them first."""
    dataset, split = data
    counts = training_counts(dataset, split.train, 1e4)
    users = split.test.subset(np.arange(8))
    heavy = dict(preset={"popularity_prior_weight": 1e4}, valid=False, popularity_prior_days=1e4, beam_width=3)
    top_counts = np.sort(counts[1:])[::-1][:3].tolist()
    # Here the most popular item's first token leads only the third heaviest prefix: three beams miss it.
    beam_only = _fit(data, **heavy)
    assert beam_only.prior_top is None
    assert all(row.tolist() != top_counts for row in counts[beam_only.recommend(users, 3)])
    joined = _fit(data, **heavy, popularity_prior_candidates=5)
    assert len(joined.prior_top.items) == 5
    assert all(row.tolist() == top_counts for row in counts[joined.recommend(users, 3)])
    # Exact: over a beam that covers the catalog, the candidates change neither the order nor the scores.
    exact = dict(preset={"popularity_prior_weight": 1.0}, valid=False, popularity_prior_days=1e4,
                 beam_width=dataset.num_items)
    plain, joined = _fit(data, **exact), _fit(data, **exact, popularity_prior_candidates=5)
    from models.grace.recommender import grace_retrieve

    for i in range(4):
        encoded = plain.encoder.encode(users.histories[i], users.behaviors[i], users.timestamps[i])
        a = grace_retrieve(plain.model, plain.trie, plain.path_to_item, *encoded, dataset.num_items,
                           trie_normalized=True, prior=plain.prior)
        b = grace_retrieve(joined.model, joined.trie, joined.path_to_item, *encoded, dataset.num_items,
                           trie_normalized=True, allowed=joined.allowed_tokens(), prior=joined.prior,
                           prior_top=joined.prior_top)
        assert a[0].tolist() == b[0].tolist()
        np.testing.assert_allclose(a[1], b[1], atol=1e-4)
