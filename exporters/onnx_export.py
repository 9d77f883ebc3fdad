"""Export the torch models to ONNX and check ONNX Runtime against torch on the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.python_backend import session
from models.grace import GraceModel
from models.ranker import Ranker
from models.tokenizer import BOS, TOKENS_PER_EVENT

OPSET = 17
PARITY_TOLERANCE = 1e-4


class _DecodeStep(nn.Module):
    def __init__(self, model: GraceModel):
        super().__init__()
        self.model = model

    def forward(self, prefix, cross_kv, memory_valid):
        return self.model.decode_step(prefix, cross_kv, memory_valid)


class _Encoder(nn.Module):
    def __init__(self, model: GraceModel):
        super().__init__()
        self.model = model

    def forward(self, tokens, valid):
        return self.model.cross_kv(self.model.encode(tokens, valid))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic_axes: dict) -> None:
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)


def _max_diff(module: nn.Module, path: Path, feeds: dict[str, np.ndarray]) -> float:
    with torch.no_grad():
        expected = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    got = session(path).run(None, feeds)[0]
    return float(np.abs(got - expected).max())


def export_grace(model: GraceModel, out_dir: Path, seed: int = 0) -> dict[str, float]:
    """Writes grace_encoder.onnx (tokens -> cross-attention K/V of every decoder layer) and
    grace_decoder_step.onnx (beam prefixes + shared K/V -> next-token log-probs); returns max |ORT - torch|."""
    rng = np.random.default_rng(seed)
    vocab, d = model.cfg.vocab_size, model.cfg.d_model
    t = 4 * TOKENS_PER_EVENT
    tokens = rng.integers(2, vocab, size=(2, t)).astype(np.int64)
    valid = np.ones((2, t), np.float32)
    tokens[1, :TOKENS_PER_EVENT], valid[1, :TOKENS_PER_EVENT] = 0, 0.0  # left padding, as in training
    encoder, step = _Encoder(model), _DecodeStep(model)
    enc_path, step_path = out_dir / "grace_encoder.onnx", out_dir / "grace_decoder_step.onnx"
    kv_axes = {2: "batch", 4: "tokens"}
    _export(encoder, (torch.from_numpy(tokens), torch.from_numpy(valid)), enc_path, ["tokens", "valid"],
            ["cross_kv"], {"tokens": {0: "batch", 1: "tokens"}, "valid": {0: "batch", 1: "tokens"},
                           "cross_kv": kv_axes})
    layers, heads = model.cfg.decoder_layers, model.cfg.num_heads
    prefix = np.concatenate([np.full((3, 1), BOS), rng.integers(2, vocab, size=(3, 2))], 1).astype(np.int64)
    cross_kv = rng.normal(size=(layers, 2, 1, heads, t, d // heads)).astype(np.float32)
    mem_valid = np.ones((1, t), np.float32)
    _export(step, (torch.from_numpy(prefix), torch.from_numpy(cross_kv), torch.from_numpy(mem_valid)), step_path,
            ["prefix", "cross_kv", "memory_valid"], ["log_probs"],
            {"prefix": {0: "beams", 1: "depth"}, "cross_kv": {4: "tokens"}, "memory_valid": {1: "tokens"},
             "log_probs": {0: "beams"}})
    # Parity on shapes other than the traced ones, so dynamic axes are exercised too.
    t2 = 7 * TOKENS_PER_EVENT
    tokens2 = rng.integers(2, vocab, size=(3, t2)).astype(np.int64)
    valid2 = np.ones((3, t2), np.float32)
    prefix2 = np.concatenate([np.full((5, 1), BOS), rng.integers(2, vocab, size=(5, 4))], 1).astype(np.int64)
    cross_kv2 = rng.normal(size=(layers, 2, 1, heads, t2, d // heads)).astype(np.float32)
    return {
        enc_path.name: _max_diff(encoder, enc_path, {"tokens": tokens2, "valid": valid2}),
        step_path.name: _max_diff(step, step_path, {"prefix": prefix2, "cross_kv": cross_kv2,
                                                    "memory_valid": np.ones((1, t2), np.float32)}),
    }


def export_ranker(model: Ranker, out_dir: Path, max_history: int, num_candidates: int, seed: int = 0
                  ) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    n = model.cfg.num_items

    def sample(b: int):
        hist = rng.integers(1, n + 1, size=(b, max_history)).astype(np.int64)
        hist[:, : max_history // 2] = 0  # right-aligned histories with padding in front
        behs = np.where(hist > 0, rng.integers(1, 5, size=hist.shape), 0).astype(np.int64)
        cand = rng.integers(1, n + 1, size=(b, num_candidates)).astype(np.int64)
        cand[:, -3:] = 0  # padded candidate slots
        return hist, behs, cand

    path = out_dir / "ranker.onnx"
    _export(model, tuple(torch.from_numpy(a) for a in sample(2)), path,
            ["hist_items", "hist_behaviors", "cand_items"], ["logits"],
            {"hist_items": {0: "batch"}, "hist_behaviors": {0: "batch"}, "cand_items": {0: "batch"},
             "logits": {0: "batch"}})
    hist, behs, cand = sample(5)
    return {path.name: _max_diff(model, path, {"hist_items": hist, "hist_behaviors": behs, "cand_items": cand})}
