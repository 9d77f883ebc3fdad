"""The GRACE family in the evaluation harness: leave-last-out metrics of a fitted recommender, and the
registry entries (factory, description) of every GRACE variant."""

from __future__ import annotations

import numpy as np

from evaluation.metrics import topk_metrics
from models.grace.recommender import VARIANTS, GraceRecommender


def evaluate_recommender(recommender, test, ks=(5, 10), exclude_history: bool = False) -> dict:
    """Leave-last-out HR@k / NDCG@k of one target per history (the evaluation harness's metrics). With
    `exclude_history` (a dataset that never repeats an item) the history's items are dropped from each ranking
    before the cut, as the server drops them."""
    k = max(ks)
    if not exclude_history:
        ranked = recommender.recommend(test, k)
    else:
        longest = max((len(h) for h in test.histories), default=0)
        ranked = without_history(recommender.recommend(test, k + longest), test.histories, k)
    return {"eval_users": len(test), **{k: round(v, 4) for k, v in topk_metrics(ranked, test.targets, ks).items()}}


def without_history(ranked: np.ndarray, histories, k: int) -> np.ndarray:
    """[M, >=k] rankings minus each row's history items, the first k kept (0-padded)."""
    out = np.zeros((len(ranked), k), np.int64)
    for i, (row, history) in enumerate(zip(ranked, histories)):
        kept = row[~np.isin(row, history) & (row > 0)][:k]
        out[i, :len(kept)] = kept
    return out


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
