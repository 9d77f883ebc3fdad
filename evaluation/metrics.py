"""Top-k metrics for leave-last-out evaluation: one target per user, mean over users."""

from __future__ import annotations

import numpy as np


def _check(ranked: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ranked = np.asarray(ranked)
    targets = np.asarray(targets)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D [users, list length], got shape {ranked.shape}")
    if targets.shape != (ranked.shape[0],):
        raise ValueError(f"targets must have shape ({ranked.shape[0]},), got {targets.shape}")
    if ranked.shape[0] == 0:
        raise ValueError("ranked has no users; metrics over zero users are undefined")
    if not 1 <= k <= ranked.shape[1]:
        raise ValueError(f"k must be in 1..{ranked.shape[1]} (the ranked list length), got {k}")
    return ranked, targets


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each user's target in its ranked list, -1 when absent (first hit if repeated)."""
    ranked, targets = np.asarray(ranked), np.asarray(targets)
    hit = ranked == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1).astype(np.int64)


def hit_rate_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of users whose target is among their top k."""
    ranked, targets = _check(ranked, targets, k)
    return float((ranked[:, :k] == targets[:, None]).any(axis=1).mean())


def ndcg_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """With one relevant item the ideal DCG is 1, so NDCG = 1 / log2(rank + 2) for a hit at 0-based rank."""
    ranked, targets = _check(ranked, targets, k)
    rank = target_ranks(ranked[:, :k], targets)
    gain = np.where(rank >= 0, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)
    return float(gain.mean())


def topk_metrics(ranked: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate_at_k(ranked, targets, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked, targets, k)
    return out
