"""Export the torch models to ONNX and check ONNX Runtime against torch on the same inputs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

from exporters.onnx_slim import slim_file
from exporters.onnx_softmax import floor_softmax_file
from models.grace.model import GraceModel
from models.ranking.model import Ranker
from models.sasrec import SASRecModel
from serving.graph import CAND_ITEMS, HIST_BEHAVIORS, HIST_ITEMS
from serving.grace.retriever import DECODER_STEP_FILE, ENCODER_FILE, LEVEL_TOKENS
from serving.ort import session
from serving.ranking import RANKER_FILE, RANKER_OUTPUTS
from serving.sasrec import ITEMS_INPUT, SASREC_FILE, SASREC_MAX_LEN_KEY

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4


class _DecodeStep(nn.Module):
    """The decoder step over named inputs (the optional memory_paths and level_tokens exist or not by model)."""

    def __init__(self, model: GraceModel, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        feeds = dict(zip(self.names, args))
        return self.model.decode_step(feeds["last_tokens"], feeds["past_kv"], feeds["cross_kv"], feeds["memory_valid"],
                                      feeds.get("memory_paths"), feeds.get(LEVEL_TOKENS))


class _Encoder(nn.Module):
    def __init__(self, model: GraceModel):
        super().__init__()
        self.model = model

    def forward(self, tokens, valid, journey_ids, journey_pos):
        return self.model.cross_kv(self.model.encode(tokens, valid, journey_ids, journey_pos))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic_axes: dict, parity: Callable[[Path], float], fold: bool = True, floor: bool = False) -> float:
    """Exports, then folds the traced shape arithmetic (exporters.onnx_slim): first merging named axes the
    graph needs equal, else strictly, else not at all, keeping the first file whose `parity` (max |ORT - torch|
    on shapes other than the traced ones) is within PARITY_TOLERANCE; with floor, then floors the Softmax inputs
    (exporters.onnx_softmax), kept under the same check. Returns the kept file's parity. fold=False: the file as
    torch exports it (exporters.fold_bench's baseline)."""
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)
    exported = path.read_bytes()
    kept = None  # the folded file's parity, once one passes
    for merge_axes in (True, False) if fold else ():
        if slim_file(path, merge_axes) is not None:
            diff = parity(path)
            if diff <= PARITY_TOLERANCE:
                kept = diff
                break
            log.warning("%s: folding with merge_axes=%s broke parity (%.3g); not kept", path.name, merge_axes, diff)
            path.write_bytes(exported)
    if fold and floor:
        return _floor_softmax(path, parity, kept)
    return parity(path) if kept is None else kept


def _floor_softmax(path: Path, parity: Callable[[Path], float], before_diff: float | None) -> float:
    """exporters.onnx_softmax's pass on an exported file, kept only where parity holds; returns the kept file's
    parity (before_diff: the file's as given, when known)."""
    before = path.read_bytes()
    try:
        if floor_softmax_file(path):
            diff = parity(path)
            if diff <= PARITY_TOLERANCE:
                return diff
            log.warning("%s: the softmax floor broke parity (%.3g); not kept", path.name, diff)
    except Exception as exc:  # noqa: BLE001 - any failure keeps the file as it was, which is still correct
        log.warning("%s: the softmax floor failed (%s); not kept", path.name, exc)
    path.write_bytes(before)
    return parity(path) if before_diff is None else before_diff


def _max_diff(module: nn.Module, path: Path, feeds: dict[str, np.ndarray]) -> float:
    with torch.no_grad():
        expected = module(*(torch.from_numpy(v) for v in feeds.values()))
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session(path).run(None, feeds)
    return max(float(np.abs(g - e.numpy()).max()) if g.size else 0.0 for g, e in zip(got, expected))


def sample_encoder_inputs(rng: np.random.Generator, vocab: int, tokens_per_event: int,
                          events_per_row: list[int]) -> dict[str, np.ndarray]:
    """Left-padded random histories with a few journeys each, shaped like the real encoder inputs."""
    t = max(events_per_row) * tokens_per_event
    b = len(events_per_row)
    tokens = np.zeros((b, t), np.int64)
    valid = np.zeros((b, t), np.float32)
    journey_ids = np.full((b, t), -1, np.int64)
    journey_pos = np.zeros((b, t), np.int64)
    for r, n in enumerate(events_per_row):
        m = n * tokens_per_event
        tokens[r, t - m:] = rng.integers(2, vocab, size=m)
        valid[r, t - m:] = 1.0
        event_journey = np.cumsum(rng.random(n) < 0.3)
        event_journey -= event_journey[0]
        journey_ids[r, t - m:] = np.repeat(event_journey, tokens_per_event)
        starts = np.searchsorted(journey_ids[r, t - m:], journey_ids[r, t - m:])
        journey_pos[r, t - m:] = np.arange(m) - starts
    return {"tokens": tokens, "valid": valid, "journey_ids": journey_ids, "journey_pos": journey_pos}


def export_grace(model: GraceModel, out_dir: Path, seed: int = 0, fold: bool = True, floor: bool = True
                 ) -> dict[str, float]:
    """Writes grace_encoder.onnx (history -> cross-attention K/V of every decoder layer) and
    grace_decoder_step.onnx (one token per beam + self-attention KV cache + shared cross K/V -> next-token
    log-probs and the grown cache); returns max |ORT - torch| on shapes other than the traced ones."""
    rng = np.random.default_rng(seed)
    cfg = model.cfg
    vocab, d, tpe = cfg.vocab_size, cfg.d_model, cfg.tokens_per_event
    encoder = _Encoder(model)
    enc_path, step_path = out_dir / ENCODER_FILE, out_dir / DECODER_STEP_FILE
    enc_names = ["tokens", "valid", "journey_ids", "journey_pos"]
    memory_axis = "events" if cfg.event_memory else "tokens"  # cross_kv's memory positions
    feeds = sample_encoder_inputs(rng, vocab, tpe, [6, 4])
    # Parity on shapes other than the traced ones (the empty first-step cache included; one request's beams and
    # several requests' beams in one call), so dynamic axes and the journey inputs are exercised too.
    # And at the longest history the model takes, beside a short one: a shape folded from the traced lengths
    # that holds only for one JSA block (the 256-event build's encoder failed past 64 events) fails parity here,
    # so the unfolded export is kept instead.
    longest = cfg.max_tokens // tpe
    enc_checks = [sample_encoder_inputs(rng, vocab, tpe, [9, 3, 7])]
    if longest > 9:
        enc_checks.append(sample_encoder_inputs(rng, vocab, tpe, [longest, longest // 2 + 1, 1]))
    # The Softmax floor on the encoder only: its causal, journey and block masks leave many scores masked (the
    # 256-event encoder runs 0.87x with it, softmax_floor.md), while the decoder step's attention is hardly masked
    # and its six small Softmaxes only pay for the floor (floored too, requests at the default build's lengths
    # ran ~1.03x in an ad hoc run of exporters.softmax_bench before this split).
    enc_diff = _export(encoder, tuple(torch.from_numpy(feeds[n]) for n in enc_names), enc_path, enc_names,
                       ["cross_kv"], {**{n: {0: "batch", 1: "tokens"} for n in enc_names},
                                      "cross_kv": {2: "batch", 4: memory_axis}},
                       lambda path: max(_max_diff(encoder, path, check) for check in enc_checks), fold, floor)
    layers, heads, hd = cfg.decoder_layers, cfg.num_heads, d // cfg.num_heads

    def step_feeds(beams: int, past_len: int, t: int, requests: int = 1) -> dict[str, np.ndarray]:
        """`requests` memories, each serving beams/requests consecutive beams (some of its memory padding)."""
        valid = np.ones((requests, t), np.float32)
        valid[1:, : t // 3] = 0.0
        feeds = {"last_tokens": rng.integers(2, vocab, size=beams).astype(np.int64),
                 "past_kv": rng.normal(size=(layers, 2, beams, heads, past_len, hd)).astype(np.float32),
                 "cross_kv": rng.normal(size=(layers, 2, requests, heads, model.memory_length(t), hd)).astype(np.float32),
                 "memory_valid": valid}
        if cfg.copy:  # the history's item paths, what the copy path copies from
            feeds["memory_paths"] = rng.integers(0, vocab, size=(requests, t // tpe, cfg.path_length)).astype(np.int64)
            if off is not None:  # real paths: each level's token inside its level (padding events are masked)
                for level in range(cfg.path_length):
                    feeds["memory_paths"][..., level] = rng.integers(off[level], off[level + 1],
                                                                     size=feeds["memory_paths"].shape[:2])
        if off is not None:  # the tokens of the level the step decodes (the cache holds the levels before it)
            feeds[LEVEL_TOKENS] = np.arange(off[past_len], off[past_len + 1], dtype=np.int64)
        return feeds

    # With level_offsets the step scores only the level it decodes (serving.grace.retriever feeds its tokens).
    off = cfg.level_offsets
    traced = step_feeds(6, min(2, cfg.path_length - 1), 4 * tpe, requests=2)
    step = _DecodeStep(model, list(traced))
    # Caches the decoder can hold: 0 (the first step) up to path_length - 1 tokens (the last step)
    pasts = sorted({0, 1, cfg.path_length - 1} & set(range(cfg.path_length)))
    step_checks = [step_feeds(beams, past, 7 * tpe, requests)
                   for past in pasts for beams, requests in ((5, 1), (12, 3), (4, 4))]
    step_diff = _export(
        step, tuple(torch.from_numpy(v) for v in traced.values()), step_path, list(traced), ["log_probs", "present_kv"],
        {"last_tokens": {0: "beams"}, "past_kv": {2: "beams", 4: "past"}, "cross_kv": {2: "requests", 4: memory_axis},
         "memory_valid": {0: "requests", 1: "tokens"}, "memory_paths": {0: "requests", 1: "events"},
         LEVEL_TOKENS: {0: "level"}, "log_probs": {0: "beams", 1: "level"} if off is not None else {0: "beams"},
         "present_kv": {2: "beams", 4: "present"}},
        lambda path: max(_max_diff(step, path, feeds) for feeds in step_checks), fold)
    return {enc_path.name: enc_diff, step_path.name: step_diff}


def export_ranker(model: Ranker, out_dir: Path, max_history: int, num_candidates: int, seed: int = 0,
                  fold: bool = True) -> dict[str, float]:
    """Writes ranker.onnx: histories [B, T] (right-aligned, T <= max_history, dynamic when the model counts
    recency in its own window's units, RankerConfig.max_history) and candidates [B, C] -> two heads [B, C]."""
    rng = np.random.default_rng(seed)
    n = model.cfg.num_items
    trimmable = model.cfg.max_history == max_history

    def sample(b: int, width: int = max_history):
        hist = rng.integers(1, n + 1, size=(b, width)).astype(np.int64)
        for row, real in enumerate(rng.integers(1, width + 1, size=b)):
            hist[row, : width - real] = 0  # right-aligned histories with padding in front
        behs = np.where(hist > 0, rng.integers(1, 5, size=hist.shape), 0).astype(np.int64)
        cand = rng.integers(1, n + 1, size=(b, num_candidates)).astype(np.int64)
        cand[:, -3:] = 0  # padded candidate slots
        cand[0, :2] = hist[0, -2:]  # candidates the history holds (the repeat features)
        return hist, behs, cand

    # The exported graph's inputs are the graph's tensors of the rank step (serving.ranking feeds them in this order).
    inputs, outputs = [HIST_ITEMS.name, HIST_BEHAVIORS.name, CAND_ITEMS.name], list(RANKER_OUTPUTS)
    axes = {name: {0: "batch"} for name in inputs + outputs}
    if trimmable:
        axes[HIST_ITEMS.name], axes[HIST_BEHAVIORS.name] = {0: "batch", 1: "events"}, {0: "batch", 1: "events"}
    widths = sorted({1, max(1, max_history // 3), max_history}) if trimmable else [max_history]
    checks = [dict(zip(inputs, sample(5, width))) for width in widths]
    path = out_dir / RANKER_FILE
    return {path.name: _export(model, tuple(torch.from_numpy(a) for a in sample(2)), path, inputs, outputs, axes,
                               lambda p: max(_max_diff(model, p, feeds) for feeds in checks), fold)}


def export_sasrec(model: SASRecModel, out_dir: Path, seed: int = 0, fold: bool = True) -> dict[str, float]:
    """Writes sasrec.onnx: right-aligned item ids [B, T] -> next-item scores [B, N], batch and length dynamic
    (T <= max_len, recorded as the file's metadata MAX_LEN_KEY): the server sends a batch's real columns only,
    since padding in front changes no real event's state (positions count from the first real event)."""
    rng = np.random.default_rng(seed)
    n, length = model.cfg.num_items, model.cfg.max_len

    def sample(b: int, width: int = length) -> np.ndarray:
        items = rng.integers(1, n + 1, size=(b, width)).astype(np.int64)
        for row, real in enumerate(rng.integers(1, width + 1, size=b)):
            items[row, : width - real] = 0  # histories of every length, padding in front
        return items

    path = out_dir / SASREC_FILE
    checks = [{ITEMS_INPUT: sample(5, width)} for width in sorted({1, max(1, length // 3), length})]
    diffs = {path.name: _export(model, (torch.from_numpy(sample(2)),), path, [ITEMS_INPUT], ["scores"],
                                {ITEMS_INPUT: {0: "batch", 1: "events"}, "scores": {0: "batch"}},
                                lambda p: max(_max_diff(model, p, feeds) for feeds in checks), fold)}
    exported = onnx.load(str(path))
    onnx.helper.set_model_props(exported, {SASREC_MAX_LEN_KEY: str(length)})
    onnx.save(exported, str(path))
    return diffs
