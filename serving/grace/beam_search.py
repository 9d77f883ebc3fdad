"""Beam search over item token paths, constrained by a prefix trie so that only real items come out.

Backend-agnostic: `step(beams [W,S], parents [W] | None) -> log-probs [W,V]` is either the torch model or
the ONNX decoder step, which lets the in-process reference and the served model share the search itself.
`parents[i]` is the row of the previous call's beams that beam i extends (None on the first call), which is
what a decoder with a KV cache needs to reorder its cache; `CachedStep` does that bookkeeping.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from serving.grace.tokenizer import BOS

StepFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
# run(last_tokens [W], past [layers,2,W,H,S,hd]) -> (log_probs [W,V], present [layers,2,W,H,S+1,hd])
CachedRunFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class CachedStep:
    """Adapts a one-token decoder with a self-attention KV cache to the beam-search step protocol."""

    def __init__(self, run: CachedRunFn, empty_cache: np.ndarray):
        self.run, self.empty_cache, self.present = run, empty_cache, None

    def __call__(self, beams: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
        past = self.empty_cache if parents is None else self.present[:, :, parents]
        log_probs, self.present = self.run(np.ascontiguousarray(beams[:, -1]), np.ascontiguousarray(past))
        return log_probs


def constrained_beam_search(step: StepFn, trie: dict[tuple[int, ...], np.ndarray],
                            path_to_item: dict[tuple[int, ...], int], beam_width: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (item_ids [<=W], scores [<=W]) sorted by descending path log-probability."""
    path_length = len(next(iter(path_to_item)))
    beams = np.full((1, 1), BOS, np.int64)
    scores = np.zeros(1, np.float64)
    parents = None
    for _ in range(path_length):
        log_probs = step(beams, parents)
        cand_beam, cand_token, cand_score = [], [], []
        for b, prefix in enumerate(beams[:, 1:].tolist()):
            allowed = trie[tuple(prefix)]
            cand_beam.append(np.full(len(allowed), b))
            cand_token.append(allowed)
            cand_score.append(scores[b] + log_probs[b, allowed].astype(np.float64))
        cand_beam_a = np.concatenate(cand_beam)
        cand_token_a = np.concatenate(cand_token)
        cand_score_a = np.concatenate(cand_score)
        # Stable sort on (-score): ties keep trie order, so every backend breaks them the same way.
        keep = np.argsort(-cand_score_a, kind="stable")[:beam_width]
        parents = cand_beam_a[keep]
        beams = np.concatenate([beams[parents], cand_token_a[keep, None]], axis=1)
        scores = cand_score_a[keep]
    items = np.array([path_to_item[tuple(p)] for p in beams[:, 1:].tolist()], np.int64)
    return items, scores.astype(np.float32)
