"""Side by side: GRACE's served retrieval with and without the Softmax floor (exporters.onnx_softmax), both exports
folded, from one repository's checkpoint, in one process, interleaved rounds, at several history lengths.

    python -m exporters.softmax_bench --repository /tmp/long-repo --events 32 128 256 \
        --out docs/results/softmax_floor.json

Reports per history length the p50/p99 of OnnxGraceRetriever per request (encoder + every decoder step + the
beam search) and of the encoder call alone, for both exports, their ratio, and whether both return the same items
(scores within 1e-4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from evaluation.provenance import commit
from exporters.fold_bench import exported_retriever, grace_build, requests
from exporters.onnx_export import OPSET
from exporters.onnx_softmax import floor_softmax
from kernels.machine import cpu_model

VARIANTS = (("no_floor", False), ("floor", True))
OP_SHAPE = (4, 4, 64, 128)  # the 256-event build's JSA block-sparse scores: [query blocks, heads, block, keys]
MASKED_FRACTIONS = (0.0, 0.5, 0.99)


def softmax_op_times(runs: int, seed: int = 0) -> list[dict]:
    """One Softmax node over OP_SHAPE with a fraction of its entries masked to -1e30 (as attention masks do),
    without and with the floor, alternated: p50 microseconds of each."""
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    graph = helper.make_graph([node], "softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, OP_SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, OP_SHAPE)])
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    floored = onnx.ModelProto()
    floored.CopyFrom(plain)
    floor_softmax(floored)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sessions = {name: ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                for name, m in (("no_floor", plain), ("floor", floored))}
    rng = np.random.default_rng(seed)
    rows = []
    for fraction in MASKED_FRACTIONS:
        x = rng.normal(0.0, 3.0, OP_SHAPE).astype(np.float32)
        x[rng.random(OP_SHAPE) < fraction] = -1e30
        times = {name: [] for name in sessions}
        for _ in range(runs):
            for name, sess in sessions.items():
                started = time.perf_counter()
                sess.run(None, {"x": x})
                times[name].append(time.perf_counter() - started)
        rows.append({"masked": fraction, **{f"{name}_p50_us": round(1e6 * float(np.median(t)), 1)
                                            for name, t in times.items()}})
    return rows


class _TimedEncoder:
    """The retriever's encoder session, each run timed."""

    def __init__(self, session, times: list[float]):
        self.session, self.times = session, times

    def run(self, *args, **kwargs):
        started = time.perf_counter()
        out = self.session.run(*args, **kwargs)
        self.times.append(time.perf_counter() - started)
        return out

    def __getattr__(self, name):
        return getattr(self.session, name)


def _stats(seconds: list[float]) -> dict:
    return {"p50_ms": round(1e3 * float(np.median(seconds)), 4), "p99_ms": round(1e3 * float(np.percentile(seconds, 99)), 4)}


def _lengths(result: dict) -> list[str]:
    """One run's table by history length, its ratios and its command."""
    rows = ["| events | export | request p50 ms | request p99 ms | encoder p50 ms | encoder p99 ms |",
            "|---:|---|---:|---:|---:|---:|"]
    ratios = []
    for length in result["lengths"]:
        for name, v in length["variants"].items():
            rows.append(f"| {length['events']} | {name} | {v['request']['p50_ms']:.3f} | {v['request']['p99_ms']:.3f} | "
                        f"{v['encoder']['p50_ms']:.3f} | {v['encoder']['p99_ms']:.3f} |")
        ratios.append(f"{length['events']} events {length['floor_over_no_floor_request_p50']:.3f} (encoder "
                      f"{length['floor_over_no_floor_encoder_p50']:.3f})")
    return [f"## {result['model']}", "",
            f"Beam width {result['beam_width']}, {result['requests']} requests per export and length in interleaved "
            "rounds.", "", *rows, "",
            "Floor / no floor, p50 per request: " + "; ".join(ratios) + ". Identical items (scores within 1e-4): "
            f"{result['identical_results']}.", "",
            f"`{result['command']}` ({result['date']}, commit {result['commit']}, {result['machine']['cpu']}; "
            f"{result.get('note', '')})".replace("; )", ")"), ""]


def render(results: dict | list[dict]) -> str:
    """docs/results/softmax_floor.md from one or more result files (the Softmax node table from the first)."""
    results = [results] if isinstance(results, dict) else results
    first = results[0]
    op_rows = ["| masked entries | no floor p50 us | floor p50 us |", "|---:|---:|---:|"]
    op_rows += [f"| {100 * r['masked']:.0f}% | {r['no_floor_p50_us']:.1f} | {r['floor_p50_us']:.1f} |"
                for r in first["softmax_op"]]
    return "\n".join([
        "# Softmax floor: GRACE's served retrieval side by side", "",
        "ONNX Runtime's CPU Softmax runs several times slower where masked scores make its exponential underflow; "
        "the exporter floors each Softmax input of the GRACE encoder at its row maximum minus 80 "
        "(exporters.onnx_softmax: the same probabilities to float32 precision; the decoder step, hardly masked, is "
        "left as it is). Below, per request: encoder, every decoder step and the beam search of "
        "`OnnxGraceRetriever`, one ORT thread, both exports from the build's checkpoint; the encoder columns are its "
        "call alone.", "",
        f"One Softmax node over {list(OP_SHAPE)} (the 256-event build's block-sparse scores), masked entries at "
        f"-1e30, {first['op_runs']} runs each, alternated, one ORT thread (the first run below):", "",
        *op_rows, "",
        *(line for result in results for line in _lengths(result))])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--events", type=int, nargs="+", default=[16], help="history lengths (events per request)")
    p.add_argument("--requests", type=int, default=50, help="requests per round, variant and length")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--op-runs", type=int, default=300, help="runs of the Softmax node alone per variant")
    p.add_argument("--out", type=Path)
    p.add_argument("--note", default="", help="recorded with the result (e.g. what else ran on the machine)")
    args = p.parse_args(argv)
    source, model, encoder, manifest = grace_build(args.repository)
    beam = int(manifest["config"]["serving"]["beam_width"])
    longest = int(manifest["limits"]["max_history"])
    if max(args.events) > longest:
        p.error(f"--events: this repository serves at most {longest} events")
    work = Path(tempfile.mkdtemp(prefix="softmax_bench_"))
    retrievers = {}
    try:
        for name, floor in VARIANTS:
            retrievers[name] = exported_retriever(source, model, work / name, floor=floor)
    finally:
        shutil.rmtree(work)
    lengths, same = [], True
    for events in args.events:
        batch = requests(encoder, len(encoder.tokenizer.item_paths) - 1, args.requests, events, seed=events)
        times = {name: {"request": [], "encoder": []} for name in retrievers}
        for name, retriever in retrievers.items():
            retriever.encoder = _TimedEncoder(retriever.encoder, times[name]["encoder"])
        for _ in range(args.rounds):
            results = {}
            for name, retriever in retrievers.items():
                results[name] = []
                for tokens, journey_ids, journey_pos in batch:
                    started = time.perf_counter()
                    results[name].append(retriever(tokens, journey_ids, journey_pos, beam))
                    times[name]["request"].append(time.perf_counter() - started)
            for (a_items, a_scores), (b_items, b_scores) in zip(*results.values()):
                same &= bool(np.array_equal(a_items, b_items) and np.allclose(a_scores, b_scores, atol=1e-4))
        for name, retriever in retrievers.items():
            retriever.encoder = retriever.encoder.session
        stats = {name: {key: _stats(t) for key, t in v.items()} for name, v in times.items()}
        lengths.append({"events": events, "variants": stats, **{
            f"floor_over_no_floor_{key}_p50": round(stats["floor"][key]["p50_ms"] / stats["no_floor"][key]["p50_ms"], 4)
            for key in ("request", "encoder")}})
    cfg = model.cfg
    result = {"command": "python -m exporters.softmax_bench " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
              "machine": {"cpu": cpu_model(), "ort_threads": 1}, "beam_width": beam,
              "model": f"{cfg.attention} attention, {'event' if cfg.event_memory else 'token'} memory, served up to "
                       f"{longest} events, d_model {cfg.d_model}, {cfg.encoder_layers} encoder layers",
              "requests": args.requests * args.rounds, "lengths": lengths,
              "op_runs": args.op_runs, "softmax_op": softmax_op_times(args.op_runs), "identical_results": same, "note": args.note}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
