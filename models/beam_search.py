"""Beam search over item token paths, constrained by a prefix trie so that only real items come out.

Backend-agnostic: `step(prefix [W,S]) -> log-probs [W,V]` is either the torch model or the ONNX decoder
step, which lets the in-process reference and the served model share the search itself.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from models.tokenizer import BOS, PATH_LENGTH

StepFn = Callable[[np.ndarray], np.ndarray]


def constrained_beam_search(step: StepFn, trie: dict[tuple[int, ...], np.ndarray],
                            path_to_item: dict[tuple[int, ...], int], beam_width: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (item_ids [<=W], scores [<=W]) sorted by descending path log-probability.

    `step` is called with prefixes of shape [num_beams, depth + 1]; the caller's step function must
    broadcast its encoder memory to num_beams rows.
    """
    beams = np.full((1, 1), BOS, np.int64)
    scores = np.zeros(1, np.float64)
    for depth in range(PATH_LENGTH):
        log_probs = step(beams)
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
        beams = np.concatenate([beams[cand_beam_a[keep]], cand_token_a[keep, None]], axis=1)
        scores = cand_score_a[keep]
    items = np.array([path_to_item[tuple(p)] for p in beams[:, 1:].tolist()], np.int64)
    return items, scores.astype(np.float32)
