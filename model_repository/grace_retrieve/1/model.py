"""grace_retrieve: GRACE encoder once, then trie-constrained beam search over the ONNX decoder step."""

import numpy as np

from exporters.python_backend import StepModel, session
from models.beam_search import constrained_beam_search
from models.tokenizer import ItemTokenizer


class TritonPythonModel(StepModel):
    INPUTS = ("enc_tokens",)

    def setup(self):
        tokenizer = ItemTokenizer.load(self.version_dir / "tokenizer.npz")
        self.trie, self.path_to_item = tokenizer.build_trie(), tokenizer.path_to_item()
        self.encoder = session(self.version_dir / "grace_encoder.onnx")
        self.decoder_step = session(self.version_dir / "grace_decoder_step.onnx")

    def run(self, enc_tokens):
        tokens = enc_tokens[None].astype(np.int64)
        valid = np.ones(tokens.shape, np.float32)
        # Cross-attention K/V once per request; every beam and step shares them (batch 1 broadcasts).
        cross_kv = self.encoder.run(None, {"tokens": tokens, "valid": valid})[0]

        def step(prefix):
            return self.decoder_step.run(None, {"prefix": prefix, "cross_kv": cross_kv, "memory_valid": valid})[0]

        items, scores = constrained_beam_search(step, self.trie, self.path_to_item, self.limits.beam_width)
        return {"grace_items": items, "grace_scores": scores}
