"""Quality of the whole served `recommend` pipeline (retrieval -> rank: merge, ranker, calibrated top-k) on the
held-out users of a built repository, next to each retrieval source alone, each source taken away, the merge
order without the ranker, and the popularity and recency baselines, on the same users.

    python -m evaluation.pipeline_quality --repository model_repository --url localhost:8001 [--users 300] \
        [--out result.json]                     # replays the users through a running server over gRPC
    python -m evaluation.pipeline_quality --repository model_repository      # the in-process reference instead
    python -m evaluation.pipeline_quality --from-result docs/results/pipeline_quality.json \
        --md docs/results/pipeline_quality.md --benchmarks BENCHMARKS.md      # re-render only

With --url, the `served` row is the server's `recommend` ensemble itself; the other rows run the same graph with
the retrieval steps called on the server over gRPC (any client may call the internal steps) and `rank` (merge,
ranker, calibration) run in process from the repository's own files by the class the server runs (the served step
takes exactly beam_width GRACE items, so it cannot rank a GRACE-less ablation), one source's candidates replaced
by none; `served_equals_steps` checks the two agree. Without --url the steps are the in-process
reference (models.reference: the served step classes in graph order, the torch models in place of their ONNX
exports, which the build checks to 1e-4). Users: the build's own leave-last-out split of the dataset it was
built from (the configuration is read from build_manifest.json), in the dataset's item ids. A dataset whose users
never repeat an item has its history dropped from every ranking (the server does it; the baselines too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from data.build_data import build_data_of
from data.sequences import leave_last_out
from evaluation.metrics import topk_metrics
from evaluation.provenance import commit
from exporters.config import from_dict
from kernels.machine import cpu_description
from models.reference import MANIFEST, ReferencePipeline, run_ensemble
from serving import graph


class WithoutSources:
    """Wraps the step that produces some retrieval sources, for an ablation: those sources return no candidates
    (the step's other outputs are its own)."""

    def __init__(self, step, definition: graph.Step, sources: list[graph.RetrievalSource]):
        self.step, self.definition, self.items = step, definition, {source.items.name for source in sources}
        # a step whose every source is dropped and whose other outputs no step reads is not called at all
        # (GRACE's beam search would be wasted); side_retrieve still hands rank the history and filters
        read = {t.name for step in graph.RECOMMEND.steps for t in step.inputs} - {
            s.items.name for s in graph.RETRIEVAL_SOURCES}
        self.skip = all(s.items.name in self.items for s in graph.RETRIEVAL_SOURCES if s.step.name == definition.name) \
            and not any(t.name in read for t in definition.outputs)

    def __call__(self, **inputs):
        if self.skip:
            return {t.name: np.zeros(0, np.int64 if t.dtype == "INT64" else np.float32) for t in self.definition.outputs}
        out = dict(self.step(**inputs))
        out.update({name: np.zeros(0, np.int64) for name in self.items})
        return out


WIRE = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32}


class RemoteStep:
    """One served model (a step of the graph, or the `recommend` ensemble) called over gRPC like a reference
    step: named numpy inputs of one request -> named numpy outputs (batch dimension added and removed)."""

    def __init__(self, client, step):
        self.client, self.step = client, step

    def __call__(self, **inputs):
        import tritonclient.grpc as grpcclient  # noqa: PLC0415 (only the served mode needs it)

        feeds = []
        for tensor in self.step.inputs:
            if tensor.name not in inputs:
                continue  # an optional input the request leaves out
            value = np.asarray(inputs[tensor.name])
            value = value.astype(WIRE[tensor.dtype]) if tensor.dtype in WIRE else value.astype(np.object_)
            value = np.ascontiguousarray(value[None])
            feed = grpcclient.InferInput(tensor.name, list(value.shape), tensor.dtype.replace("STRING", "BYTES"))
            feed.set_data_from_numpy(value)
            feeds.append(feed)
        result = self.client.infer(self.step.name, feeds, client_timeout=120,
                                   outputs=[grpcclient.InferRequestedOutput(t.name) for t in self.step.outputs])
        return {t.name: result.as_numpy(t.name)[0] for t in self.step.outputs}


def served_steps(client, repository: Path) -> dict:
    """Every step of `recommend` on the server, but `rank`, run in process from the repository's own files (the
    same class the server runs): the served step takes exactly beam_width GRACE items, so a GRACE-less ablation
    can only be ranked here."""
    from serving.contract import ServingLimits  # noqa: PLC0415
    from serving.steps import IMPLEMENTATIONS  # noqa: PLC0415

    steps = {step.name: RemoteStep(client, step) for step in graph.RECOMMEND.steps}
    limits = ServingLimits.from_dict(json.loads((repository / MANIFEST).read_text())["limits"])
    steps[graph.RANK.name] = IMPLEMENTATIONS[graph.RANK.name].create(repository / graph.RANK.name / "1", limits)
    return steps


def held_out(config, users: int):
    """The build's own leave-last-out split (its dataset, or its simulator's) and its first `users` test users,
    with item ids in the dataset's ids (what the served API speaks); plus the data and internal-id examples
    for the baselines."""
    data = build_data_of(config)
    split = leave_last_out(data.sequences(), config.serving.max_history)
    internal = split.test.subset(np.arange(min(users, len(split.test))))
    examples = internal.subset(np.arange(len(internal)))
    ids = data.catalog.item_ids
    examples.histories = [ids[h] for h in examples.histories]
    examples.targets = ids[examples.targets]
    return examples, internal, split, data


def held_out_examples(config, users: int):
    return held_out(config, users)[0]


def evaluate_pipeline(steps: dict, examples, k: int = 10, without: str | None = None,
                      only: str | None = None, external_ids: np.ndarray | None = None) -> dict:
    """HR/NDCG of the served top-k (and of the merge order, before the ranker) for `steps` (reference or
    RemoteStep objects by step name); `without` takes one source's candidates away, `only` keeps one source.
    external_ids maps the internal candidate ids of the merge order to the dataset's (identity if None)."""
    steps = dict(getattr(steps, "steps", steps))
    dropped = [s for s in graph.RETRIEVAL_SOURCES if s.name == without or (only is not None and s.name != only)]
    for step in {source.step.name for source in dropped}:
        steps[step] = WithoutSources(steps[step], graph.STEPS[step], [s for s in dropped if s.step.name == step])
    ranked = np.zeros((len(examples), k), np.int64)
    merged = np.zeros((len(examples), k), np.int64)
    credited = {name: 0 for name in graph.SOURCE_NAMES}
    started = time.perf_counter()
    for i in range(len(examples)):
        out = run_ensemble(graph.RECOMMEND, steps, request_of(examples, i, k), every_tensor=True)
        items = out[graph.TOP_ITEM_IDS.name]
        ranked[i, :len(items)] = items
        candidates = out[graph.CAND_ITEMS.name]
        candidates = candidates[candidates > 0][:k]  # internal ids, in merge (source priority) order
        merged[i, :len(candidates)] = candidates if external_ids is None else external_ids[candidates]
        for name in out[graph.RETRIEVAL_SOURCE.name]:
            credited[name.decode() if isinstance(name, bytes) else str(name)] += 1
    total = max(1, sum(credited.values()))
    return {"users": len(examples), **{m: round(v, 4) for m, v in topk_metrics(ranked, examples.targets).items()},
            "merge_order": {m: round(v, 4) for m, v in topk_metrics(merged, examples.targets).items()},
            "top_k_share_by_source": {n: round(c / total, 4) for n, c in credited.items()},
            "seconds": round(time.perf_counter() - started, 1)}


def request_of(examples, i: int, k: int) -> dict[str, np.ndarray]:
    values = (examples.histories[i], examples.behaviors[i], examples.timestamps[i].astype(np.int64), [k])
    return {t.name: np.asarray(v, WIRE[t.dtype]) for t, v in zip(graph.RECOMMEND.inputs, values)}


def evaluate_served(client, examples, steps: dict, k: int = 10) -> dict:
    """The server's `recommend` ensemble itself on every user, and how often its top-k equals the graph run
    step by step on the same server (the other rows' machinery)."""
    ensemble = RemoteStep(client, graph.RECOMMEND)
    ranked = np.zeros((len(examples), k), np.int64)
    same = 0
    started = time.perf_counter()
    for i in range(len(examples)):
        request = request_of(examples, i, k)
        items = ensemble(**request)[graph.TOP_ITEM_IDS.name]
        ranked[i, :len(items)] = items
        stepwise = run_ensemble(graph.RECOMMEND, steps, request)[graph.TOP_ITEM_IDS.name]
        same += int(np.array_equal(items, stepwise))
    return {"users": len(examples), **{m: round(v, 4) for m, v in topk_metrics(ranked, examples.targets).items()},
            "served_equals_steps": round(same / max(1, len(examples)), 4),
            "seconds": round(time.perf_counter() - started, 1)}


def evaluate_baselines(split, internal, data, exclude_history: bool, k: int = 10) -> dict:
    """Most-popular and recency (the user's own items newest first, then popular) on the same users."""
    from evaluation.baselines import MostPopular, MostRecent  # noqa: PLC0415 (torch-free path above)

    rows = {}
    for name, model in (("mostpop", MostPopular()), ("recency", MostRecent())):
        model.fit(data.sequences(), split.train)
        ranked = model.recommend(internal.histories, k, exclude_history=exclude_history)
        rows[name] = {"users": len(internal),
                      **{m: round(v, 4) for m, v in topk_metrics(ranked, internal.targets).items()}}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the built repository (its manifest names the data and the held-out users)")
    parser.add_argument("--url", help="a running server's gRPC address (host:port): replay through it")
    parser.add_argument("--users", type=int, help="held-out users (default: the build's eval_users)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--md", type=Path, help="also render it as a markdown table here")
    parser.add_argument("--benchmarks", type=Path, help="also replace (or add) its section in this BENCHMARKS.md")
    parser.add_argument("--from-result", type=Path, help="render this committed result file instead of running")
    args = parser.parse_args()
    if args.from_result:
        write_renderings(json.loads(args.from_result.read_text()), args.md, args.benchmarks)
        return
    result = run(args.repository, args.users, args.url, "python -m evaluation.pipeline_quality " + " ".join(sys.argv[1:]))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_renderings(result, args.md, args.benchmarks)


def run(repository: Path, users: int | None, url: str | None, command: str) -> dict:
    manifest = json.loads((repository / MANIFEST).read_text())
    config = from_dict(manifest["config"])
    examples, internal, split, data = held_out(config, users or config.grace.eval_users)
    exclude = bool(manifest["limits"].get("exclude_history"))
    result = {"command": command, "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": cpu_description(), "build_seconds": manifest.get("build_seconds"),
              "dataset": manifest.get("dataset", {}).get("name"), "mode": "served over gRPC" if url else "in process",
              "history_excluded": exclude}
    client = None
    if url:
        import tritonclient.grpc as grpcclient  # noqa: PLC0415

        client = grpcclient.InferenceServerClient(url)
        steps = served_steps(client, repository)
        result["served"] = evaluate_served(client, examples, steps)
    else:
        steps = ReferencePipeline(repository).steps
    try:
        ids = data.catalog.item_ids
        result["all_sources"] = evaluate_pipeline(steps, examples, external_ids=ids)
        for source in graph.SOURCE_NAMES:
            result[f"only_{source}"] = evaluate_pipeline(steps, examples, only=source, external_ids=ids)
        for source in graph.SOURCE_NAMES:
            result[f"without_{source}"] = evaluate_pipeline(steps, examples, without=source, external_ids=ids)
    finally:
        if client is not None:
            client.close()
    result.update(evaluate_baselines(split, internal, data, exclude))
    return result


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
    """The result file as a table: one row per configuration, with the merge order's HR@10 (the candidates in
    source priority order, before the ranker) and each source's share of the served top-10."""
    sources = list(result["all_sources"]["top_k_share_by_source"])
    mode = result.get("mode", "in process")
    lines = ["# Served pipeline quality by retrieval source", "",
             f"`{result['command']}` at commit {result['commit']}, {result['date']}, {result['machine']}; "
             f"dataset {result.get('dataset') or 'the simulator'}, steps run {mode}. "
             "Leave-last-out on the build's held-out users: the whole served pipeline (retrieval, merge, ranker, "
             "calibrated top-10); `only_*` keeps one source's candidates, `without_*` takes one away; "
             "`merge HR@10` is the same candidates in merge order, before the ranker; `mostpop` and `recency` are "
             "the baselines on the same users"
             + (" (history items dropped from every ranking: the dataset never repeats an item)"
                if result.get("history_excluded") else "") + ".", ""]
    if "served" in result:
        lines += [f"The `served` row is the server's `recommend` itself; its top-10 equals the step-by-step run's "
                  f"for {result['served']['served_equals_steps']:.0%} of the users.", ""]
    lines += ["| configuration | users | HR@10 | NDCG@10 | HR@5 | merge HR@10 | "
              + " | ".join(f"{s} share of top-10" for s in sources) + " |", "|---" * (6 + len(sources)) + "|"]
    for name, row in result.items():
        if not isinstance(row, dict) or "hr@10" not in row:
            continue
        merge = f"{row['merge_order']['hr@10']:.4f}" if "merge_order" in row else ""
        shares = " | ".join(f"{row['top_k_share_by_source'][s]:.3f}" if "top_k_share_by_source" in row else ""
                            for s in sources)
        lines.append(f"| {name} | {row['users']} | {row['hr@10']:.4f} | {row['ndcg@10']:.4f} | {row['hr@5']:.4f} | "
                     f"{merge} | {shares} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
