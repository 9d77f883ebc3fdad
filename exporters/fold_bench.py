"""Side by side: GRACE's served retrieval with the ONNX files as torch exports them and with their shape arithmetic
folded (exporters.onnx_slim), from one repository's checkpoint, in one process, interleaved rounds.

    python -m exporters.fold_bench --repository model_repository --out docs/results/onnx_fold.json

Reports per-request p50/p99 of OnnxGraceRetriever (encoder + every decoder step + the beam search) for both
exports, their ratio, the kernels ONNX Runtime runs per file (after its own graph optimisation), and checks that
both return the same items with the same scores.
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

from evaluation.provenance import commit
from exporters.onnx_export import export_grace
from kernels.machine import cpu_model
from models.grace.model import load_checkpoint
from serving import graph
from serving.grace.history import HistoryEncoder
from serving.grace.retriever import DECODER_STEP_FILE, ENCODER_FILE, OnnxGraceRetriever


def kernels(path: Path) -> int:
    """Nodes ONNX Runtime runs for the file: its graph after the session's optimisation (one intra-op thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return len(onnx.load(opts.optimized_model_filepath).graph.node)


def grace_build(repository: Path) -> tuple[Path, object, HistoryEncoder, dict]:
    """A built repository's GRACE: its version folder, trained model, history encoder and build manifest."""
    source = repository / graph.GRACE_RETRIEVE.name / "1"
    manifest = json.loads((repository / "build_manifest.json").read_text())
    return source, load_checkpoint(source), HistoryEncoder.load(source), manifest


def exported_retriever(source: Path, model, folder: Path, **export) -> OnnxGraceRetriever:
    """The served retriever over `source`'s files with the model re-exported into `folder` (export_grace's options)."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    export_grace(model, folder, seed=0, **export)
    return OnnxGraceRetriever(folder)


def requests(encoder: HistoryEncoder, num_items: int, count: int, events: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        items = rng.integers(1, num_items + 1, events)
        times = np.cumsum(rng.exponential(600.0, events))  # several journeys per history
        out.append(encoder.encode(items, np.ones(events, np.int64), times))
    return out


def render(result: dict) -> str:
    """docs/results/onnx_fold.md from the result file."""
    rows = ["| export | p50 ms | p99 ms | encoder kernels | decoder-step kernels |", "|---|---:|---:|---:|---:|"]
    for name, v in result["variants"].items():
        rows.append(f"| {name} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['kernels'][ENCODER_FILE]} | "
                    f"{v['kernels'][DECODER_STEP_FILE]} |")
    return "\n".join([
        "# ONNX shape folding: GRACE's served retrieval side by side", "",
        f"Per request (encoder, every decoder step and the beam search of `OnnxGraceRetriever`, one ORT thread), "
        f"{result['events']}-event histories, beam width {result['beam_width']}, {result['requests']} requests per "
        f"export in interleaved rounds; kernels are the nodes ONNX Runtime runs after its own optimisation.", "",
        *rows, "",
        f"Folded / as exported, p50: **{result['folded_over_exported_p50']:.3f}**; identical items and scores: "
        f"{result['identical_results']}.", "",
        f"`{result['command']}` ({result['date']}, commit {result['commit']}, {result['machine']['cpu']}; "
        f"{result.get('note', '')})".replace("; )", ")"), ""])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--events", type=int, default=16, help="history length of every request")
    p.add_argument("--requests", type=int, default=200, help="requests per round and variant")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path)
    p.add_argument("--note", default="", help="recorded with the result (e.g. what else ran on the machine)")
    args = p.parse_args(argv)
    source, model, encoder, manifest = grace_build(args.repository)
    beam = int(manifest["config"]["serving"]["beam_width"])
    work = Path(tempfile.mkdtemp(prefix="fold_bench_"))
    variants, files = {}, {}
    for name, fold in (("as_exported", False), ("folded", True)):
        folder = work / name
        # folding alone (softmax_bench measures the floor)
        variants[name] = exported_retriever(source, model, folder, fold=fold, floor=False)
        files[name] = {f: kernels(folder / f) for f in (ENCODER_FILE, DECODER_STEP_FILE)}
    batch = requests(encoder, len(encoder.tokenizer.item_paths) - 1, args.requests, args.events, seed=0)
    times = {name: [] for name in variants}
    same = True
    for _ in range(args.rounds):
        results = {}
        for name, retriever in variants.items():
            results[name] = []
            for tokens, journey_ids, journey_pos in batch:
                started = time.perf_counter()
                results[name].append(retriever(tokens, journey_ids, journey_pos, beam))
                times[name].append(time.perf_counter() - started)
        for (a_items, a_scores), (b_items, b_scores) in zip(results["as_exported"], results["folded"]):
            same &= bool(np.array_equal(a_items, b_items) and np.allclose(a_scores, b_scores, atol=1e-4))
    shutil.rmtree(work)
    stats = {name: {"p50_ms": round(1e3 * float(np.median(t)), 4), "p99_ms": round(1e3 * float(np.percentile(t, 99)), 4),
                    "kernels": files[name]} for name, t in times.items()}
    ratio = stats["folded"]["p50_ms"] / stats["as_exported"]["p50_ms"]
    result = {"command": "python -m exporters.fold_bench " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
              "machine": {"cpu": cpu_model(), "ort_threads": 1}, "events": args.events, "beam_width": beam,
              "requests": args.requests * args.rounds, "variants": stats, "folded_over_exported_p50": round(ratio, 4),
              "identical_results": same, "note": args.note}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
