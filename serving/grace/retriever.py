"""The served GRACE retriever: the ONNX encoder once per batch of requests (left-padded with whole events), then
the trie-constrained beam searches of every request advanced together, one ONNX decoder-step call per step for
every beam of every request (the step feeds one token per beam and carries the self-attention KV cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serving.grace.beam_search import (CachedStep, PriorStep, TrieIndex, TrieNormalizedStep, batched_beam_search,
                                       constrained_beam_search, prefix_log_mass, score_paths)
from serving.grace.history import TOKENIZER_FILE
from serving.grace.tokenizer import ItemTokenizer, event_paths
from serving.ort import session

ENCODER_FILE, DECODER_STEP_FILE = "grace_encoder.onnx", "grace_decoder_step.onnx"
DECODING_FILE = "grace_decoding.json"  # how the beam search scores a step, as the model was trained to


PRIOR_FILE = "grace_prior.npy"  # the popularity prior's item weights [N+1], when the model was chosen with one


def save_decoding(directory: Path, trie_normalized: bool, prior_weights: np.ndarray | None = None,
                  prior_weight: float = 0.0, prior_candidates: np.ndarray | None = None) -> None:
    """How the served search scores: trie-normalised or not, and the popularity prior (its item weights in
    PRIOR_FILE and its weight; GraceTrainConfig.popularity_prior_days) when one was chosen, with the prior's top
    items that join the beam's as candidates (GraceTrainConfig.popularity_prior_candidates), if any."""
    decoding = {"trie_normalized": bool(trie_normalized)}
    if prior_weights is not None and prior_weight:
        np.save(Path(directory) / PRIOR_FILE, np.asarray(prior_weights, np.float64))
        decoding.update(prior_weight=float(prior_weight), prior_file=PRIOR_FILE)
        if prior_candidates is not None and len(prior_candidates):
            decoding["prior_candidates"] = [int(i) for i in prior_candidates]
    (Path(directory) / DECODING_FILE).write_text(json.dumps(decoding) + "\n")


def load_prior_candidates(directory: Path) -> np.ndarray | None:
    """The prior's top items that join the beam's (internal ids, best first), or None."""
    path = Path(directory) / DECODING_FILE
    decoding = json.loads(path.read_text()) if path.exists() else {}
    found = decoding.get("prior_candidates") if decoding.get("prior_weight") else None
    return None if not found else np.asarray(found, np.int64)


def load_prior(directory: Path) -> tuple[np.ndarray, float] | None:
    """(item weights [N+1], weight) of the popularity prior the build chose, or None."""
    path = Path(directory) / DECODING_FILE
    decoding = json.loads(path.read_text()) if path.exists() else {}
    if not decoding.get("prior_weight"):
        return None
    return np.load(Path(directory) / decoding["prior_file"]), float(decoding["prior_weight"])


def trie_normalized(directory: Path) -> bool:
    """Whether each beam's step is renormalised over its trie children (a model trained with trie_loss); a
    repository built before the file existed decodes level-normalised."""
    path = Path(directory) / DECODING_FILE
    return bool(json.loads(path.read_text())["trie_normalized"]) if path.exists() else False


def load_decoding(directory: Path) -> tuple[dict, dict, int]:
    """The tokenizer's prefix trie, path -> item map and vocabulary size: what constrained decoding needs (the
    served retriever and the torch reference alike)."""
    return _decoding(ItemTokenizer.load(Path(directory) / TOKENIZER_FILE))


def _decoding(tokenizer: ItemTokenizer) -> tuple[dict, dict, int]:
    return tokenizer.build_trie(), tokenizer.path_to_item(), tokenizer.vocab_size


LEVEL_TOKENS = "level_tokens"  # the decoder step's input naming the tokens it scores (one path level's)


class OnnxGraceRetriever:
    def __init__(self, directory: Path):
        directory = Path(directory)
        tokenizer = ItemTokenizer.load(directory / TOKENIZER_FILE)
        self.trie, self.path_to_item, self.vocab_size = _decoding(tokenizer)
        self.trie_normalized = trie_normalized(directory)
        self.encoder = session(directory / ENCODER_FILE)
        self.decoder_step = session(directory / DECODER_STEP_FILE)
        past = next(i for i in self.decoder_step.get_inputs() if i.name == "past_kv").shape
        # [layers, 2, beams, heads, past, head_dim]: the empty cache of the first step.
        self.empty_cache = np.zeros((past[0], 2, 1, past[3], 0, past[5]), np.float32)
        self.index = TrieIndex(self.trie, self.path_to_item)
        self.prior_step = None  # the one-request search's form of the prior (_one), made on first use
        self.prior = load_prior(directory)
        # The popularity prior as a bias per trie edge (added to each step's score; None: no prior).
        self.edge_bias = None if self.prior is None else self.index.edge_prior(*self.prior)
        self.prior_candidates = load_prior_candidates(directory)
        cross = next(i for i in self.decoder_step.get_inputs() if i.name == "cross_kv").shape
        # A dynamic requests axis (a name in ONNX Runtime, -1 in a native model's config): several requests per
        # step call. (Reading only ONNX Runtime's names once sent the GPU rendering down the one-request path.)
        self.batched = not isinstance(cross[2], int) or cross[2] < 0
        if self.prior_candidates is not None and not self.batched:
            raise RuntimeError("the popularity prior's candidates are scored by the batched search; this decoder "
                               "export takes one request at a time (rebuild the repository)")
        paths = next((i for i in self.decoder_step.get_inputs() if i.name == "memory_paths"), None)
        # A model with the copy path reads the history's item paths ([requests, events, path_length]).
        self.copy_path_length = None if paths is None else int(paths.shape[2])
        # A level-restricted step scores only the tokens of the level it decodes (a level's tokens are one range
        # of the vocabulary): a quarter of the head and softmax at the semantic levels. An older export scores all.
        restricted = any(i.name == LEVEL_TOKENS for i in self.decoder_step.get_inputs())
        self.level_offsets = tokenizer.level_offsets if restricted else None
        offsets = tokenizer.level_offsets
        self.level_tokens = None if not restricted else [  # each level's tokens, fed at its depth
            np.arange(start, end, dtype=np.int64) for start, end in zip(offsets, offsets[1:])]

    def __call__(self, tokens: np.ndarray, journey_ids: np.ndarray, journey_pos: np.ndarray, beam_width: int,
                 exclude: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.batch([(tokens, journey_ids, journey_pos, exclude)], beam_width)[0]

    def batch(self, requests: list[tuple[np.ndarray, np.ndarray, np.ndarray, set[int] | None]], beam_width: int
              ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(items, scores) of each request (tokens, journey_ids, journey_pos, excluded items)."""
        if not self.batched:  # a repository exported before batched decoding: one request at a time
            return [self._one(*request, beam_width) for request in requests]
        t = max(len(request[0]) for request in requests)
        n = len(requests)
        # Left padding with whole events: the encoder's positions count from the first real token, so a history's
        # memory does not depend on the padding (the padding is masked in every attention).
        tokens, journey_ids = np.zeros((n, t), np.int64), np.full((n, t), -1, np.int64)
        journey_pos, valid = np.zeros((n, t), np.int64), np.zeros((n, t), np.float32)
        for row, (tok, jid, jpos, _) in enumerate(requests):
            tokens[row, t - len(tok):], journey_ids[row, t - len(tok):] = tok, jid
            journey_pos[row, t - len(tok):], valid[row, t - len(tok):] = jpos, 1.0
        cross_kv = self.encoder.run(None, {"tokens": tokens, "valid": valid, "journey_ids": journey_ids,
                                           "journey_pos": journey_pos})[0]

        memory = {"cross_kv": cross_kv, "memory_valid": valid, **self._memory_paths(tokens)}

        def run(last_tokens, past):
            feeds = {"last_tokens": last_tokens, "past_kv": past, **memory}
            if self.level_tokens is not None:  # the cache holds the decoded prefix: its length is the level
                feeds[LEVEL_TOKENS] = self.level_tokens[past.shape[4]]
            log_probs, present = self.decoder_step.run(None, feeds)
            return log_probs, present

        excludes = [r[3] for r in requests]
        found = batched_beam_search(run, self.empty_cache, self.index, beam_width, excludes, self.level_offsets,
                                    self.trie_normalized, self.edge_bias)
        if self.prior_candidates is None:
            return found
        # The prior's top items join each request's beam items; every candidate is scored as the search scores a
        # path (its tokens fed step by step), the best beam_width kept: the product the beam only approximates.
        joined = [np.union1d(items, [i for i in self.prior_candidates.tolist() if not exclude or i not in exclude])
                  for (items, _), exclude in zip(found, excludes)]
        scored = score_paths(run, self.empty_cache, self.index, joined, self.level_offsets, self.trie_normalized,
                             self.edge_bias)
        out = []
        for items, scores in zip(joined, scored):
            order = np.argsort(-scores, kind="stable")[:beam_width]  # ties: the smaller id, as the reference
            out.append((items[order].astype(np.int64), scores[order].astype(np.float32)))
        return out

    def _one(self, tokens, journey_ids, journey_pos, exclude, beam_width):
        valid = np.ones((1, len(tokens)), np.float32)
        feeds = {"tokens": tokens[None].astype(np.int64), "valid": valid,
                 "journey_ids": journey_ids[None].astype(np.int64), "journey_pos": journey_pos[None].astype(np.int64)}
        memory = {"cross_kv": self.encoder.run(None, feeds)[0], "memory_valid": valid,
                  **self._memory_paths(feeds["tokens"])}

        def run(last_tokens, past):
            return self.decoder_step.run(None, {"last_tokens": last_tokens, "past_kv": past, **memory})

        step = CachedStep(run, self.empty_cache)
        step = TrieNormalizedStep(step, self.trie) if self.trie_normalized else step
        if self.prior is not None:
            if self.prior_step is None:  # built once, and only for an export that takes this path
                self.prior_step = PriorStep(None, self.trie, prefix_log_mass(self.path_to_item, self.prior[0]),
                                            self.prior[1])
            step = self.prior_step.over(step)
        return constrained_beam_search(step, self.trie, self.path_to_item, beam_width, exclude)

    def _memory_paths(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """{"memory_paths": each event's item path [R, E, P]} for a model with the copy path, else {}."""
        if self.copy_path_length is None:
            return {}
        return {"memory_paths": np.ascontiguousarray(event_paths(tokens, self.copy_path_length + 1))}
