"""grace_retrieve: GRACE encoder once per request, then trie-constrained beam search over the ONNX decoder
step, which feeds one token per beam and carries the decoder's self-attention KV cache."""

import numpy as np

from exporters.python_backend import StepModel, session
from models.beam_search import CachedStep, constrained_beam_search
from models.tokenizer import ItemTokenizer


class TritonPythonModel(StepModel):
    INPUTS = ("enc_tokens", "enc_journey_ids", "enc_journey_pos")

    def setup(self):
        tokenizer = ItemTokenizer.load(self.version_dir / "tokenizer.npz")
        self.trie, self.path_to_item = tokenizer.build_trie(), tokenizer.path_to_item()
        self.encoder = session(self.version_dir / "grace_encoder.onnx")
        self.decoder_step = session(self.version_dir / "grace_decoder_step.onnx")
        past = next(i for i in self.decoder_step.get_inputs() if i.name == "past_kv").shape
        # [layers, 2, beams, heads, past, head_dim]: the empty cache of the first step.
        self.empty_cache = np.zeros((past[0], 2, 1, past[3], 0, past[5]), np.float32)

    def run(self, enc_tokens, enc_journey_ids, enc_journey_pos):
        valid = np.ones((1, len(enc_tokens)), np.float32)
        feeds = {"tokens": enc_tokens[None].astype(np.int64), "valid": valid,
                 "journey_ids": enc_journey_ids[None].astype(np.int64),
                 "journey_pos": enc_journey_pos[None].astype(np.int64)}
        # Cross-attention K/V once per request; every beam and step shares them (batch 1 broadcasts).
        cross_kv = self.encoder.run(None, feeds)[0]

        def run(last_tokens, past):
            log_probs, present = self.decoder_step.run(None, {"last_tokens": last_tokens, "past_kv": past,
                                                              "cross_kv": cross_kv, "memory_valid": valid})
            return log_probs, present

        items, scores = constrained_beam_search(CachedStep(run, self.empty_cache), self.trie, self.path_to_item,
                                                self.limits.beam_width)
        return {"grace_items": items, "grace_scores": scores}
