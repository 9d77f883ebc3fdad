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
                            path_to_item: dict[tuple[int, ...], int], beam_width: int,
                            exclude: "set[int] | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (item_ids [<=W], scores [<=W]) sorted by descending path log-probability. Items in `exclude`
    (e.g. a history a dataset never repeats) are never completed, and no beam enters a prefix whose items are
    all excluded, so the W beams go to other items."""
    path_length = len(next(iter(path_to_item)))
    blocked: set[tuple[int, ...]] = set()
    if exclude:
        sizes, item_paths = _trie_index(path_to_item)
        excluded_under: dict[tuple[int, ...], int] = {}
        for item in exclude:  # only the excluded items' paths: no pass over the catalog per request
            path = item_paths.get(item)
            for depth in range(1, path_length + 1) if path is not None else ():
                excluded_under[path[:depth]] = excluded_under.get(path[:depth], 0) + 1
        blocked = {prefix for prefix, n in excluded_under.items() if n == sizes[prefix]}
    beams = np.full((1, 1), BOS, np.int64)
    scores = np.zeros(1, np.float64)
    parents = None
    for _ in range(path_length):
        log_probs = step(beams, parents)
        cand_beam, cand_token, cand_score = [], [], []
        for b, prefix in enumerate(beams[:, 1:].tolist()):
            allowed = trie[tuple(prefix)]
            if blocked:
                allowed = np.array([t for t in allowed.tolist() if (*prefix, t) not in blocked], np.int64)
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


_INDEX: dict[int, tuple[dict, tuple[dict, dict]]] = {}


def _trie_index(path_to_item: dict[tuple[int, ...], int]) -> tuple[dict[tuple[int, ...], int], dict[int, tuple]]:
    """Items under every prefix of the trie, and each item's path (computed once per path_to_item mapping)."""
    cached = _INDEX.get(id(path_to_item))
    if cached is not None and cached[0] is path_to_item:
        return cached[1]
    sizes: dict[tuple[int, ...], int] = {}
    for path in path_to_item:
        for depth in range(1, len(path) + 1):
            sizes[path[:depth]] = sizes.get(path[:depth], 0) + 1
    index = (sizes, {item: path for path, item in path_to_item.items()})
    _INDEX[id(path_to_item)] = (path_to_item, index)
    return index
