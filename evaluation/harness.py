"""The GRACE family in the evaluation harness: leave-last-out metrics of a fitted recommender, and the
registry entries (factory, description) of every GRACE variant."""

from __future__ import annotations

from evaluation.metrics import topk_metrics
from models.grace.recommender import VARIANTS, GraceRecommender


def evaluate_recommender(recommender, test, ks=(5, 10)) -> dict:
    """Leave-last-out HR@k / NDCG@k of one target per history (the evaluation harness's metrics)."""
    ranked = recommender.recommend(test, max(ks))
    return {"eval_users": len(test), **{k: round(v, 4) for k, v in topk_metrics(ranked, test.targets, ks).items()}}


DESCRIPTIONS = {
    "grace_jsa": "GRACE: CoT tokens (attributes + semantic IDs), journey-aware sparse attention, journeys",
    "grace_dense": "GRACE with dense causal attention (same tokens and journeys)",
    "grace_nocot": "GRACE without CoT attributes: semantic IDs only, journey-aware sparse attention",
    "tiger": "TIGER-style: semantic IDs only, dense bidirectional encoder, no journeys",
}


def harness_factories() -> dict:
    """name -> (factory(dataset, seed) -> GraceRecommender, description), for evaluation.evaluate's registry."""
    return {name: (lambda dataset, seed, name=name: GraceRecommender(name, progress=False), DESCRIPTIONS[name])
            for name in VARIANTS}
