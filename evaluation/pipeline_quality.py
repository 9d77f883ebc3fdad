"""Quality of the whole served `recommend` pipeline (retrieval -> merge -> ranker -> calibrated top-k) on the
held-out users of a built repository, and what each retrieval source contributes: the same users again with
one source's candidates taken away at a time.

    python -m evaluation.pipeline_quality --repository model_repository [--users 300] [--out result.json]
    python -m evaluation.pipeline_quality --from-result docs/results/pipeline_quality.json \
        --md docs/results/pipeline_quality.md --benchmarks BENCHMARKS.md      # re-render only

It runs the in-process reference (models.reference: the served step classes in graph order, the torch
models in place of their ONNX exports, which the build checks to 1e-4), on the build's own leave-last-out
split of the dataset it was built from (the configuration is read from build_manifest.json), in the dataset's
item ids.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from data.build_data import build_data_of
from data.sequences import leave_last_out
from evaluation.metrics import topk_metrics
from exporters.config import from_dict
from kernels.machine import cpu_description
from models.reference import MANIFEST, ReferencePipeline, run_ensemble
from serving import graph


class NoCandidates:
    """Stands in for one retrieval step in an ablation: the source returns no candidates."""

    def __init__(self, step: graph.Step):
        self.step = step

    def __call__(self, **inputs):
        return {t.name: np.zeros(0, np.int64 if t.dtype == "INT64" else np.float32) for t in self.step.outputs}


def held_out_examples(config, users: int):
    """The build's own leave-last-out test users (its dataset, or its simulator's), the first `users` of them,
    with item ids in the dataset's ids (what the served API speaks)."""
    data = build_data_of(config)
    split = leave_last_out(data.sequences(), config.serving.max_history)
    examples = split.test.subset(np.arange(min(users, len(split.test))))
    ids = data.catalog.item_ids
    examples.histories = [ids[h] for h in examples.histories]
    examples.targets = ids[examples.targets]
    return examples


def evaluate_pipeline(reference: ReferencePipeline, examples, k: int = 10, without: str | None = None) -> dict:
    steps = dict(reference.steps)
    if without is not None:
        source = next(s for s in graph.RETRIEVAL_SOURCES if s.name == without)
        steps[source.step.name] = NoCandidates(source.step)
    ranked = np.zeros((len(examples), k), np.int64)
    credited = {name: 0 for name in graph.SOURCE_NAMES}
    started = time.perf_counter()
    for i in range(len(examples)):
        values = (examples.histories[i], examples.behaviors[i], examples.timestamps[i].astype(np.int64), [k])
        request = {t.name: np.asarray(v) for t, v in zip(graph.RECOMMEND.inputs, values)}
        out = run_ensemble(graph.RECOMMEND, steps, request)
        items = out[graph.TOP_ITEM_IDS.name]
        ranked[i, :len(items)] = items
        for name in out[graph.RETRIEVAL_SOURCE.name]:
            credited[name.decode()] += 1
    total = max(1, sum(credited.values()))
    return {"users": len(examples), **{m: round(v, 4) for m, v in topk_metrics(ranked, examples.targets).items()},
            "top_k_share_by_source": {n: round(c / total, 4) for n, c in credited.items()},
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--users", type=int, help="held-out users (default: the build's eval_users)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--md", type=Path, help="also render it as a markdown table here")
    parser.add_argument("--benchmarks", type=Path, help="also replace (or add) its section in this BENCHMARKS.md")
    parser.add_argument("--from-result", type=Path, help="render this committed result file instead of running")
    args = parser.parse_args()
    if args.from_result:
        write_renderings(json.loads(args.from_result.read_text()), args.md, args.benchmarks)
        return
    manifest = json.loads((args.repository / MANIFEST).read_text())
    config = from_dict(manifest["config"])
    examples = held_out_examples(config, args.users or config.grace.eval_users)
    reference = ReferencePipeline(args.repository)
    result = {"command": "python -m evaluation.pipeline_quality " + " ".join(sys.argv[1:]),
              "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": cpu_description(), "build_seconds": manifest.get("build_seconds"),
              "all_sources": evaluate_pipeline(reference, examples)}
    for source in graph.SOURCE_NAMES:
        result[f"without_{source}"] = evaluate_pipeline(reference, examples, without=source)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_renderings(result, args.md, args.benchmarks)


SECTION = "pipeline_quality"  # BENCHMARKS.md's markers: <!-- pipeline_quality: begin --> ... end -->


def write_renderings(result: dict, md: Path | None, benchmarks: Path | None) -> None:
    if md:
        md.write_text(render_markdown(result))
    if benchmarks:
        benchmarks.write_text(with_section(benchmarks.read_text(), render_markdown(result)))


def with_section(text: str, table: str, name: str = SECTION) -> str:
    """BENCHMARKS.md with its section `name` (between its markers) replaced by `table`, or appended."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    section = f"{begin}\n#{table}{end}\n"  # one heading level down inside BENCHMARKS.md
    if begin in text:
        head, rest = text.split(begin, 1)
        return head + section + rest.split(end, 1)[1].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + section


def render_markdown(result: dict) -> str:
    """The result file as a table: one row per configuration, with each source's share of the served top-10."""
    sources = list(result["all_sources"]["top_k_share_by_source"])
    lines = ["# Served pipeline quality by retrieval source", "",
             f"`{result['command']}` at commit {result['commit']}, {result['date']}, {result['machine']}. "
             "Leave-last-out on the build's held-out users, the whole served pipeline (retrieval, merge, ranker, "
             "calibrated top-10) run in process; each `without_*` row takes one source's candidates away. The "
             "models are the build's, at its default budget (not trained to convergence): the table shows what each "
             "source adds to the served answer, not how the models compare.", "",
             "| configuration | users | HR@10 | NDCG@10 | HR@5 | " + " | ".join(f"{s} share of top-10" for s in sources)
             + " |", "|---" * (5 + len(sources)) + "|"]
    for name, row in result.items():
        if not isinstance(row, dict) or "hr@10" not in row:
            continue
        shares = " | ".join(f"{row['top_k_share_by_source'][s]:.3f}" for s in sources)
        lines.append(f"| {name} | {row['users']} | {row['hr@10']:.4f} | {row['ndcg@10']:.4f} | {row['hr@5']:.4f} | "
                     f"{shares} |")
    return "\n".join(lines) + "\n"


def commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent)
    return proc.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
