"""The GRACE family in the evaluation harness: leave-last-out metrics of a fitted recommender, and the
registry entries (factory, description) of every GRACE variant."""

from __future__ import annotations

import numpy as np

from evaluation.metrics import topk_metrics
import dataclasses

from models.grace.recommender import VARIANTS, GraceRecommender, GraceTrainConfig


def evaluate_recommender(recommender, test, ks=(5, 10), exclude_history: bool = False) -> dict:
    """Leave-last-out HR@k / NDCG@k of one target per history (the evaluation harness's metrics). With
    `exclude_history` (a dataset that never repeats an item) the history's items are dropped from each ranking
    before the cut, as the server drops them."""
    k = max(ks)
    ranked = recommender.recommend(test, k, exclude_history=True) if exclude_history else recommender.recommend(test, k)
    return {"eval_users": len(test), **{k: round(v, 4) for k, v in topk_metrics(ranked, test.targets, ks).items()}}


DESCRIPTIONS = {
    # Descriptions render the committed result tables (docs/results/grace.md): they must hold for old runs
    # too, so they name the variant, not defaults that changed since (the memory, the copy path).
    "grace_jsa": "GRACE: CoT tokens (attributes + semantic IDs), journey-aware sparse attention, journeys",
    "grace_dense": "GRACE with dense causal attention (same tokens and journeys)",
    "grace_nocot": "GRACE without CoT attributes: semantic IDs only, journey-aware sparse attention",
    "tiger": "TIGER-style: semantic IDs only, dense bidirectional encoder, no journeys",
}


def harness_factories(settings: dict | None = None) -> dict:
    """name -> (factory(dataset, seed) -> GraceRecommender, description), for evaluation.evaluate's registry;
    `settings` changes GraceTrainConfig fields (unknown names are errors)."""
    cfg = dataclasses.replace(GraceTrainConfig(), **(settings or {}))
    return {name: (lambda dataset, seed, name=name: GraceRecommender(name, cfg, progress=False), DESCRIPTIONS[name])
            for name in VARIANTS}
