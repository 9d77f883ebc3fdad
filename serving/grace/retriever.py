"""The served GRACE retriever: the ONNX encoder once per request, then trie-constrained beam search over the
ONNX decoder step, which feeds one token per beam and carries the decoder's self-attention KV cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.grace.beam_search import CachedStep, constrained_beam_search
from serving.grace.history import TOKENIZER_FILE
from serving.grace.tokenizer import ItemTokenizer
from serving.ort import session

ENCODER_FILE, DECODER_STEP_FILE = "grace_encoder.onnx", "grace_decoder_step.onnx"


def load_decoding(directory: Path) -> tuple[dict, dict, int]:
    """The tokenizer's prefix trie, path -> item map and vocabulary size: what constrained decoding needs (the
    served retriever and the torch reference alike)."""
    tokenizer = ItemTokenizer.load(Path(directory) / TOKENIZER_FILE)
    return tokenizer.build_trie(), tokenizer.path_to_item(), tokenizer.vocab_size


class OnnxGraceRetriever:
    def __init__(self, directory: Path):
        directory = Path(directory)
        self.trie, self.path_to_item, self.vocab_size = load_decoding(directory)
        self.encoder = session(directory / ENCODER_FILE)
        self.decoder_step = session(directory / DECODER_STEP_FILE)
        past = next(i for i in self.decoder_step.get_inputs() if i.name == "past_kv").shape
        # [layers, 2, beams, heads, past, head_dim]: the empty cache of the first step.
        self.empty_cache = np.zeros((past[0], 2, 1, past[3], 0, past[5]), np.float32)

    def __call__(self, tokens: np.ndarray, journey_ids: np.ndarray, journey_pos: np.ndarray, beam_width: int,
                 exclude: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        valid = np.ones((1, len(tokens)), np.float32)
        feeds = {"tokens": tokens[None].astype(np.int64), "valid": valid,
                 "journey_ids": journey_ids[None].astype(np.int64), "journey_pos": journey_pos[None].astype(np.int64)}
        # Cross-attention K/V once per request; every beam and step shares them (batch 1 broadcasts).
        cross_kv = self.encoder.run(None, feeds)[0]

        def run(last_tokens, past):
            log_probs, present = self.decoder_step.run(None, {"last_tokens": last_tokens, "past_kv": past,
                                                              "cross_kv": cross_kv, "memory_valid": valid})
            return log_probs, present

        return constrained_beam_search(CachedStep(run, self.empty_cache), self.trie, self.path_to_item, beam_width,
                                       exclude)
