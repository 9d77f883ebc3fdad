"""One command for every generated table: BENCHMARKS.md's sections and the docs/results/*.md beside their result
files, each rendered from a result file committed under docs/results/ (which carries its command, commit, date
and machine). A figure without a result file has no place in them.

    python -m evaluation.report           # rewrite what differs
    python -m evaluation.report --check   # exit 1, naming each section or file that differs (CI runs this)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _grace(stem: str) -> str:
    from evaluation.evaluate import aggregate, paired_differences, render_markdown  # noqa: PLC0415 - imports torch

    raw = _load(f"{stem}.json")
    names = [d["name"] for d in raw["meta"]["datasets"]]
    plots = {n: f"{stem}_{n}.png" for n in names if (RESULTS / f"{stem}_{n}.png").exists()}
    return render_markdown(raw["meta"], aggregate(raw["runs"]), plots, paired_differences(raw["runs"]))


def _grace_section() -> str:
    from evaluation.evaluate import benchmark_section  # noqa: PLC0415

    return benchmark_section(_grace("grace"), (RESULTS / "grace.md").relative_to(ROOT))


def _builds() -> str:
    from evaluation.build_report import render_markdown  # noqa: PLC0415

    return render_markdown([_load("build_simulator.json"), _load("build_movielens.json")])


def _pipeline(name: str = "pipeline_quality.json") -> str:
    from evaluation.pipeline_quality import render_markdown  # noqa: PLC0415

    return render_markdown(_load(name))


def _pipeline_movielens() -> str:
    return _pipeline("pipeline_quality_movielens.json").replace(
        "# Served pipeline quality by retrieval source", "# Served pipeline quality by retrieval source: MovieLens-100k", 1)


def _soak() -> str:
    from loadtests.soak import render  # noqa: PLC0415

    return render(_load("soak.json"))


def _recommend_load() -> str:
    from loadtests.run import render  # noqa: PLC0415

    return ("# `recommend` end to end over gRPC (locust, closed loop)\n\nThrough the launcher's defaults (nginx "
            "proxy, admin key, watchdog) on the default build; histories of 5..16 random valid events, k = 10. "
            "locust shares the 2 cores with the server, so concurrency 4 measures the machine as a whole.\n\n"
            + render([_load("load_recommend_c1.json"), _load("load_recommend_c4.json")]))


def _throughput() -> str:
    from loadtests.throughput import render  # noqa: PLC0415

    return ("# `recommend`: served vs in process, and closed-loop throughput\n\nThe default build behind the "
            "launcher's defaults (nginx proxy, admin key, watchdog with liveness probes); the in-process side runs "
            "the very same step code without Triton. ![closed loop](throughput.png)\n\n" + render(_load("throughput.json")))


def _throughput_long() -> str:
    from loadtests.throughput import render  # noqa: PLC0415

    result = _load("throughput_long.json")
    build = result["build"]
    return ("# `recommend` with long histories\n\nA build that serves histories of up to "
            f"{build['max_history']} events (`python -m exporters.build_repository --set "
            f"serving.max_history={build['max_history']}`, dataset {build['dataset']}, GRACE path "
            f"{build['grace_variant']}, build {build['build_seconds']} s), behind the launcher's defaults; each "
            "history length measured at concurrency 1, in process and served interleaved. The simulator's shoppers have about 40 events "
            "each, so the model saw few positions past ~100 in training: these are latency figures, not quality "
            "ones.\n\n" + render(result))


def _variant_sweeps(name: str, title: str, cells: list[tuple[str, int]], tail: bool) -> str:
    """Side-by-side perf_analyzer sweeps of one build's variants (loadtests.queue_delay): each run's points, then
    the median per variant; `tail`: p99 beside p50."""
    data = _load(f"{name}.json")
    lines = [f"# {title}: side-by-side perf_analyzer sweeps", "", data["what"] + ".", ""]
    lines += [f"- `{key}`: {text}" for key, text in data["variants"].items()]
    unit = "req/s, p50, p99 ms" if tail else "req/s, p50 ms"

    def cell(p: dict) -> str:
        return f"{p['req_per_s']:.1f}, {p['p50_ms']:.1f}" + (f", {p['p99_ms']:.1f}" if tail else "")

    lines += ["", "| variant | run | " + " | ".join(f"{m} c{c} {unit}" for m, c in cells) + " |",
              "|---" * (2 + len(cells)) + "|"]
    by_variant: dict[str, list[dict]] = {}
    for run in data["runs"]:
        points = {(p["model"], p["concurrency"]): p for p in run["result"]["points"]}
        by_variant.setdefault(run["variant"], []).append(points)
        lines.append(f"| {run['variant']} | {run['result']['date']} | " + " | ".join(
            cell(points[c]) if c in points and points[c]["p50_ms"] else "" for c in cells) + " |")
    lines += ["", "Median over the runs:", "", "| variant | runs | " + " | ".join(f"{m} c{c}" for m, c in cells) + " |",
              "|---" * (2 + len(cells)) + "|"]
    for variant, runs in by_variant.items():
        row = []
        for c in cells:
            have = [r[c] for r in runs if c in r and r[c]["p50_ms"]]
            p99 = f", p99 {np.median([p['p99_ms'] for p in have]):.2f} ms" if tail and have else ""
            row.append(f"{np.median([p['req_per_s'] for p in have]):.1f} req/s, p50 "
                       f"{np.median([p['p50_ms'] for p in have]):.2f} ms{p99}" if have else "")
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(row) + " |")
    first = data["runs"][0]["result"]
    lines += ["", f"Each run: `{first['command']}` (the server restarted on the variant's repository), "
                  f"{first['machine']}."]
    return "\n".join(lines) + "\n"


def _queue_delay() -> str:
    """The dynamic batcher's delay, chosen by measurement."""
    return _variant_sweeps("queue_delay", "Dynamic batching delay",
                           [("recommend", 1), ("recommend", 4), ("recommend", 16), ("score_ads", 1)], tail=False)


def _queue_policy() -> str:
    """With and without a queue policy on the steps (serving/configs.py: _queue)."""
    return _variant_sweeps("queue_policy", "Queue policy on the steps",
                           [("recommend", 1), ("recommend", 4), ("recommend", 16), ("score_ads", 1),
                            ("score_ads", 4)], tail=True)


def _ragged_batch() -> str:
    """With and without ragged batching on the steps (serving/configs.py: step_config)."""
    return _variant_sweeps("ragged_batch", "Ragged batching on the steps",
                           [("recommend", 1), ("recommend", 4), ("recommend", 16), ("score_ads", 1),
                            ("score_ads", 4)], tail=True)


def _perf_sweep() -> str:
    from loadtests.perf_sweep import render  # noqa: PLC0415

    return render(_load("perf_sweep.json"))


def _perf_sweep_direct() -> str:
    """The same sweep sent straight to tritonserver's own port (no proxy hop): concurrency 1 and score_ads."""
    from loadtests.perf_sweep import render  # noqa: PLC0415

    return render(_load("perf_sweep_direct.json"), title="perf_analyzer sweep straight to tritonserver (no proxy)")


def _source(result: dict, name: str) -> str:
    return f"{name} ({result['commit']}, {result['date'][:10]})"


# docs/operations.md's capacity plan: what "100x" means and the node shape it is sized on.
TARGET_FACTOR, NODE_CORES, POD_CORES, PODS_PER_NODE = 100, 32, 2, 14


def _operations_pod() -> str:
    """docs/operations.md's "What one pod does now" and the CPU sizing that follows from it, every figure read
    from the result file it names (with that file's commit and date)."""
    thr, sweep, long_, soak = (_load(n) for n in ("throughput.json", "perf_sweep.json", "throughput_long.json",
                                                   "soak.json"))
    c1 = thr["interleaved"]
    steps = ", ".join(f"{k} {v:.2f} ms" for k, v in c1["in_process_step_p50_ms"].items())
    loop = {r["concurrency"]: r for r in thr["closed_loop"]}
    peak = max(thr["closed_loop"], key=lambda r: r["req_per_s"])
    rec = {p["concurrency"]: p for p in sweep["points"] if p["model"] == "recommend"}
    ads = {p["concurrency"]: p for p in sweep["points"] if p["model"] == "score_ads"}
    pa_peak = max(rec.values(), key=lambda p: p["req_per_s"])
    cpu = pa_peak["cpu_ms_per_request"]
    cpu_parts = sorted(((k, v) for k, v in cpu.items() if v >= 0.05), key=lambda kv: -kv[1])
    longest = max(long_["by_history_length"], key=lambda r: r["events"])
    mem0, mem1 = soak["result"]["memory_start_mib"], soak["result"]["memory_end_mib"]
    stubs = sum(1 for k in mem0 if k.startswith("stub"))
    T, S, L, K = (_source(thr, "throughput.md"), _source(sweep, "perf_sweep.md"), _source(long_, "throughput_long.md"),
                  _source(soak, "soak.json"))
    rows = [
        ("`recommend` in process (the step code without Triton), concurrency 1",
         f"p50 {c1['in_process']['p50_ms']:.2f} ms, mean {c1['in_process']['mean_ms']:.2f} ms; per step p50: {steps}", T),
        ("`recommend` served, concurrency 1, interleaved with the above",
         f"p50 {c1['served']['p50_ms']:.2f} ms, p99 {c1['served']['p99_ms']:.2f} ms "
         f"({c1['served_over_in_process_p50']:.2f}x / {c1['served_over_in_process_p99']:.2f}x in process)"
         + (f"; straight to tritonserver's own port p50 {c1['served_direct']['p50_ms']:.2f} ms "
            f"({c1['direct_over_in_process_p50']:.2f}x)" if "served_direct" in c1 else ""), T),
    ]
    if 1 in loop:
        rows.append(("`recommend` closed loop (Python gRPC clients), 1 client",
                     f"{loop[1]['req_per_s']:.1f} req/s, p50 {loop[1]['p50_ms']:.1f} ms, p99 {loop[1]['p99_ms']:.1f} ms", T))
    rows.append((f"`recommend` closed loop, {peak['concurrency']} clients (the peak of that generator)",
                 f"{peak['req_per_s']:.1f} req/s, p50 {peak['p50_ms']:.1f} ms, p99 {peak['p99_ms']:.1f} ms", T))
    rows.append((f"`recommend` perf_analyzer, concurrency 1 / {pa_peak['concurrency']} (its peak)",
                 f"{rec[1]['req_per_s']:.1f} / {pa_peak['req_per_s']:.1f} req/s, p99 {rec[1]['p99_ms']:.1f} / "
                 f"{pa_peak['p99_ms']:.1f} ms", S))
    rows.append((f"CPU per `recommend` at concurrency {pa_peak['concurrency']}, all processes",
                 f"{sum(cpu.values()):.2f} ms: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu_parts), S))
    rows.append((f"`recommend` with {longest['events']}-event histories (a `serving.max_history="
                 f"{long_['build']['max_history']}` build), concurrency 1",
                 f"served p50 {longest['served']['p50_ms']:.1f} ms (in process {longest['in_process']['p50_ms']:.1f} ms)",
                 L))
    if 1 in ads:
        rows.append((f"`score_ads`, 1 user x {sweep['args']['campaigns']} campaigns, perf_analyzer concurrency 1",
                     f"{ads[1]['req_per_s']:.1f} req/s, p50 {ads[1]['p50_ms']:.2f} ms, p99 {ads[1]['p99_ms']:.2f} ms", S))
    res = soak["result"]
    rows.append((f"soak, {soak['settings']['rate']:g} req/s for {soak['settings']['duration_s']:g} s",
                 f"{res['failures']} failures of {res['requests']}, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms; "
                 f"RSS of tritonserver + {stubs} stubs {sum(mem0.values()):.0f} MiB at start, "
                 f"{sum(mem1.values()):.0f} MiB at end", K))
    lines = ["**What one pod does now.** Rendered by `python -m evaluation.report` from the result files named "
             "(commit, date); measured on a 2-core Xeon shared with other jobs, the load generator on the same "
             "cores: lower bounds on what a dedicated core does.", "",
             "| figure | value | file |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    c1_rate, sat_rate = rec[1]["req_per_s"], pa_peak["req_per_s"]
    target = TARGET_FACTOR * sat_rate
    latency_pods, sat_pods = -(-target // c1_rate), -(-target // sat_rate)
    lines += ["", f"So one 2-core pod serves about {c1_rate:.0f} req/s of `recommend` with one request in flight "
              f"(perf_analyzer, p99 {rec[1]['p99_ms']:.0f} ms) and peaks at about {sat_rate:.0f} req/s with "
              f"{pa_peak['concurrency']} in flight (p99 {pa_peak['p99_ms']:.0f} ms), where both cores are busy: a "
              f"request costs about {sum(cpu.values()):.1f} ms of CPU across all processes, the largest part "
              f"{cpu_parts[0][0]} ({cpu_parts[0][1]:.2f} ms).", "",
              f"**CPU nodes at {TARGET_FACTOR}x** (about {target:,.0f} req/s of `recommend`, {TARGET_FACTOR} times "
              f"that peak). Sized for latency, at the one-request-in-flight rate: {target:,.0f} / {c1_rate:.0f} ≈ "
              f"{latency_pods:.0f} pods, {POD_CORES * latency_pods:.0f} cores. Sized at the saturated rate it would be "
              f"~{sat_pods:.0f} pods. With the cpu overlay's {POD_CORES}-CPU request "
              "(`deploy/overlays/cpu/deployment-resources.yaml`), a "
              f"{NODE_CORES}-core node holds ~{PODS_PER_NODE} pods after system reservations, so "
              f"~{-(-latency_pods // PODS_PER_NODE):.0f} nodes for the latency sizing "
              f"({-(-sat_pods // PODS_PER_NODE):.0f} at saturation), plus one node of headroom for a drain (the PDB "
              f"takes one pod at a time). Memory is not the limit: ~{sum(mem1.values()) / 1024:.1f} GiB RSS per pod "
              "(soak.json) against the 3 GiB request."]
    return "\n".join(lines) + "\n"


def _latency() -> str:
    from loadtests.latency import render  # noqa: PLC0415

    return ("# `score_ads` and `clip_embed` latency at concurrency 1\n\nClient-observed gRPC latency after 50 "
            "warm-up requests, same server.\n\n"
            + render([_load("latency_score_ads.json"), _load("latency_score_ads_direct.json"),
                      _load("latency_clip_embed.json")]))


def _clip() -> str:
    from evaluation.clip_report import render  # noqa: PLC0415

    return render([_load("build_simulator.json"), _load("build_movielens.json")])


def _from(module: str, function: str, result: str) -> Callable[[], str]:
    """The page that `module.function(result file)` renders (imported when rendered: some import torch)."""
    def render() -> str:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(module), function)(_load(result))

    return render


_ctr = _from("evaluation.ctr_evaluate", "to_markdown", "ctr.json")
_ann_sweep = _from("evaluation.ann_sweep", "render", "ann_sweep.json")
_kernels_cpu = _from("kernels.bench", "render", "kernels_cpu.json")
_kernels_cpu_csv = _from("kernels.bench", "render_csv", "kernels_cpu.json")
_jsa_compute = _from("evaluation.jsa_compute", "render", "jsa_compute.json")
_onnx_fold = _from("exporters.fold_bench", "render", "onnx_fold.json")


def _softmax_floor() -> str:
    from exporters.softmax_bench import render  # noqa: PLC0415

    return render([_load("softmax_floor.json"), _load("softmax_floor_default.json")])


_jsa_compute_csv = _from("evaluation.jsa_compute", "render_csv", "jsa_compute.json")


GRACE_BUILD_LR_RUNS = ("grace_build_lr_ml100k_s0_1e-3.json", "grace_build_lr_ml100k_s0_3e-3.json",
                       "grace_build_lr_ml100k_s1_1e-3.json", "grace_build_lr_ml100k_s1_3e-3.json",
                       "grace_build_lr_sim_s0_1e-3.json", "grace_build_lr_sim_s0_3e-3.json")
# Token memory (the runs above at lr 3e-3) against one memory position per event, plus the copy path where
# users repeat items (the simulator).
GRACE_EVENT_MEMORY_RUNS = ("grace_build_lr_ml100k_s0_3e-3.json", "grace_event_memory_ml100k_s0.json",
                           "grace_build_lr_ml100k_s1_3e-3.json", "grace_event_memory_ml100k_s1.json",
                           "grace_build_lr_sim_s0_3e-3.json", "grace_event_memory_sim_s0.json")


def _command_models(command: str) -> set[str]:
    """The report names of the models an evaluate command trains (GRACE models carry its --suffix)."""
    words = shlex.split(command.split("  #")[0])
    if "--models" not in words:
        return set()
    start = words.index("--models") + 1
    end = next((i for i in range(start, len(words)) if words[i].startswith("--")), len(words))
    suffix = words[words.index("--suffix") + 1] if "--suffix" in words else ""
    return {m + suffix if m.startswith("grace") else m for m in words[start:end]}


def _grace_build_runs(title: str, intro: str, runs: tuple) -> str:
    """Evaluate runs side by side per dataset and seed: one raw evaluate result per entry (a file name, or (file
    name, the models of it to show)), its command and commit below the table."""
    lines = [f"# {title}", "", intro, "",
             "| dataset | seed | model | batch | lr | HR@10 | NDCG@10 | best validation HR@10 (at step) | "
             "stopped at step | train s | to best s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    commands = []
    for entry in runs:
        name, models = (entry, None) if isinstance(entry, str) else entry
        raw = _load(name)
        budget = raw["meta"]["budget"]
        split = " (time split)" if raw["meta"].get("split") == "time" else ""
        # A combined report's commands carry their own commits ("[commit ...]").
        commands += [f"- `{c}`" + ("" if "[commit " in c else f" at commit {raw['meta'].get('commit', 'not recorded')}")
                     for c in raw["meta"]["commands"] if models is None or _command_models(c) & set(models)]
        for r in raw["runs"]:
            if models is not None and r["model"] not in models:
                continue
            lines.append(f"| {r['dataset']}{split} | {r['seed']} | {r['model']} | {budget['batch_size']} | "
                         f"{budget['lr']:g} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['valid_hr@10']:.4f} "
                         f"({r['best_step']}) | {r['train_steps']} | {r['train_seconds']:.0f} | "
                         f"{format(r['seconds_to_best'], '.0f') if 'seconds_to_best' in r else ''} |")
    machine = raw["meta"]["machine"]
    return "\n".join(lines + ["", f"Machine: {machine['cpu']}, {machine['cpu_count']} CPUs, torch {machine['torch']} "
                                   f"with {machine['torch_threads']} thread(s).", ""] + commands) + "\n"


def _grace_build_lr() -> str:
    return _grace_build_runs(
        "GRACE's build learning rate",
        "Each row is one `python -m evaluation.evaluate` run (its command below the table), leave-last-out, all "
        "users scored; two runs of one dataset and seed ran side by side on the 2 cores. The build default "
        "(`grace.lr` in exporters/config.py) follows this table.", GRACE_BUILD_LR_RUNS)


# Batch size and learning rate at convergence (grace.md's protocol otherwise): grace.md's budget (batch 32, lr
# 1e-3) under-trains SASRec.
GRACE_BATCH_RUNS = (("grace.json", ("sasrec", "grace_jsa")), "grace_batch_sasrec_b32lr2_s0.json",
                    "grace_batch_sasrec_b32lr2_s1.json", "grace_batch_grace_b32lr2_s0.json",
                    "grace_batch_sasrec_b64lr1_s0.json", "grace_batch_b64_s0.json", "grace_batch_b64_s1.json",
                    "grace_batch_sasrec_b128lr4_s0.json", "grace_sasrec_b128.json", "grace_batch_ihyb_b64_s0.json",
                    "grace_batch_ihyb_b64_s1.json", "grace_batch_dense_b64_s0.json", "grace_batch_dense_b64_s1.json",
                    "grace_batch_iemb_b64_s0.json", "grace_batch_iemb_b64_s1.json", "grace_batch_iemb_ihyb_b64_s0.json",
                    "grace_batch_iemb_ihyb_b64_s1.json",
                    ("grace_time.json", ("sasrec", "grace_jsa_prior30c")), "grace_batch_ts_sasrec_lr2_s0.json",
                    "grace_batch_ts_sasrec_lr2_s1.json")


def _grace_batch() -> str:
    return _grace_build_runs(
        "Batch size and learning rate at convergence: SASRec and GRACE-JSA on MovieLens-100k",
        "grace.md's protocol (leave-last-out, windows of 50 events, early stopping with patience 4 on every "
        "user's second-last event, up to 40 epochs, all 943 users scored) at other batch sizes and learning "
        "rates; the row at 200 epochs and patience 5 is an earlier run. `grace_jsa_ihyb`: GRACE-JSA at batch 64 with "
        "the dense item head beside the decoder and hybrid retrieval (`--grace item_head=true --grace "
        "item_retrieval=hybrid`, grace_heads.md's option, here at convergence): it validates higher than GRACE-JSA "
        "alone and does not test higher. `grace_dense_b64`: GRACE with dense causal attention at GRACE-JSA's batch-64 "
        "budget, the like-for-like pair for JSA (grace_jsa_b64). `grace_jsa_iemb`: GRACE-JSA at batch 64 with a "
        "vector per item in the event memory (`--grace item_embedding=true`: a hashed item embedding added to each "
        "event's token sum, as SASRec's item embeddings give each item its own parameters); `grace_jsa_iemb_ihyb`: "
        "the same with the item head and hybrid retrieval, whose item vectors then get the per-item vector too. "
        "Both validate above their counterparts (grace_jsa_b64, grace_jsa_ihyb) on both seeds and test about level "
        "with them; neither reaches SASRec. grace.md's one budget for every "
        "model (batch 32, lr 1e-3) is not SASRec's best: at lr 2e-3 it validates and tests higher. The last rows "
        "are grace_time.md's global time split (few test users there: see its table), where SASRec at lr 2e-3 "
        "also tests higher than at 1e-3 and stays far below GRACE with the 30-day popularity prior and its "
        "candidates (`grace_jsa_prior30c`) and below 30-day popularity alone (grace_time.md). Choose by the "
        "validation column; the test columns are reported, not tuned on. Each row is one seed of one `python -m "
        "evaluation.evaluate` run (its command below); the runs shared the 2 cores with other jobs, so seconds "
        "are indicative (`to best s`: training seconds until the best validation).", GRACE_BATCH_RUNS)


GRACE_CONVERGENCE_RUNS = ("grace.json", "grace_convergence_event_memory.json")


def _memory(run: dict) -> str:
    """The GRACE memory a run trained with: its recorded config; runs recorded without one predate event memory."""
    if not run["model"].startswith("grace"):
        return ""
    return "events" if run.get("config", {}).get("event_memory") else "tokens"


def _grace_convergence() -> str:
    """Every model trained to its best validation HR@10 (grace.md's protocol), GRACE with either memory."""
    lines = ["## At convergence (the protocol of grace.md: lr 1e-3, up to 40 epochs, patience 4, windows of 50 "
             "events, all users validated and scored)", "",
             "| model | memory | seed | HR@10 | NDCG@10 | best validation HR@10 | train s | to best s |",
             "|---|---|---|---|---|---|---|---|"]
    commands = []
    for name in GRACE_CONVERGENCE_RUNS:
        raw = _load(name)
        commands += [f"- `{c}` at commit {raw['meta'].get('commit', 'not recorded')}" for c in raw["meta"]["commands"]]
        for r in raw["runs"]:
            valid = f"{r['valid_hr@10']:.4f}" if "valid_hr@10" in r else ""
            lines.append(f"| {r['model']} | {_memory(r)} | {r['seed']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | "
                         f"{valid} | {r['train_seconds']:.0f} | {r.get('seconds_to_best', '')} |")
    return "\n".join(lines + [""] + commands) + "\n"


def _grace_event_memory() -> str:
    return _grace_build_runs(
        "GRACE's memory: tokens or events, and the copy path",
        "`grace_jsa` attends over every token of the history (6 to 9 per event); `grace_jsa_ev` / `grace_jsa_copy` "
        "over one position per event, the sum of the event's token embeddings (`event_memory`), and "
        "`grace_jsa_copy` adds the copy path (`copy`: a pointer over the history's events mixed with generation "
        "by a learned gate; only where users repeat items, so not on MovieLens). Each row is one `python -m "
        "evaluation.evaluate` run at the build's budget, leave-last-out, all users scored; runs were not always "
        "alone on the 2 cores, so seconds are indicative. The defaults of `GraceTrainConfig` follow this table.",
        GRACE_EVENT_MEMORY_RUNS) + "\n" + _grace_convergence()


# The item path GRACE writes: CoT attributes + semantic IDs (grace_jsa) or the semantic IDs alone (grace_nocot),
# both with the current defaults (event memory; the copy path on the simulator), plus two knobs tried on MovieLens.
GRACE_PATH_RUNS = ("grace_event_memory_ml100k_s0.json", "grace_path_ml100k_nocot_s0.json",
                   "grace_event_memory_ml100k_s1.json", "grace_path_ml100k_nocot_s1.json",
                   "grace_path_ml100k_cot_s2.json", "grace_path_ml100k_nocot_s2.json",
                   "grace_event_memory_sim_s0.json", "grace_path_sim_nocot_s0.json",
                   "grace_path_sim_cot_s1.json", "grace_path_sim_nocot_s1.json",
                   "grace_path_ml100k_b8_s0.json", "grace_path_ml100k_b8_s1.json",
                   "grace_path_ml100k_beam50_s0.json", "grace_path_ml100k_beam50_s1.json")


def _grace_path() -> str:
    return _grace_build_runs(
        "GRACE's item path: attributes + semantic IDs, or semantic IDs alone",
        "`grace_jsa` (`grace_jsa_ev`, `grace_jsa_copy`: the same model, named by the run that added event memory "
        "and the copy path) writes each item as its catalog attributes (the chain-of-thought tokens: category, "
        "leaf category, brand, price bucket on the simulator; genre, genre set, year bucket on MovieLens) then "
        "its 3 semantic-ID codes and a disambiguation code; `grace_nocot` writes the semantic IDs and the "
        "disambiguation code only (4 tokens instead of 7-8; the history's events are shorter too). Same "
        "encoder (journey-aware sparse attention over one position per event), journeys, copy path (simulator) "
        "and budget. Also tried on MovieLens, not kept: `_b8`, JSA's blocks and window of 8 events instead of 64 "
        "(`--grace jsa_block=8`); `_beam50`, beam width 50 instead of 20 in validation and test. Each row is "
        "one `python -m evaluation.evaluate` run at the build's budget, leave-last-out, all users scored; two "
        "runs shared the 2 cores, so seconds are indicative. The build's default variant (`grace.variant` in "
        "exporters/config.py) follows this table.", GRACE_PATH_RUNS)


GRACE_TRIE_RUNS = ("grace_trie_ml100k_ctrl_s0.json", "grace_trie_ml100k_s0.json",
                   "grace_trie_ml100k_leveldecode_s0.json", "grace_event_memory_ml100k_s1.json",
                   "grace_trie_ml100k_s1.json", "grace_path_sim_nocot_s0.json", "grace_trie_sim_nocot_s0.json")


def _grace_trie() -> str:
    return _grace_build_runs(
        "GRACE trained with the loss it is searched with: a softmax over the trie's children",
        "`_trie` (`--grace trie_loss=true`): at each path position the training softmax runs over the children the "
        "item trie allows after the target's prefix (the other tokens masked), and retrieval renormalises each "
        "beam's step over its children the same way (the reference and the served beam search). `_ctrl`: the "
        "same command with the loss off, reproducing the committed baseline (`grace_jsa_ev`, same figures). "
        "`_trie_leveldecode`: trained with the trie loss, decoded with level-normalised scores (what the served "
        "search did before it renormalised): the disallowed tokens' scores are untrained, and it falls below the "
        "baseline. Each row is one `python -m evaluation.evaluate` run at the build's budget, leave-last-out, all "
        "users scored; a server shared the cores during these runs, so seconds are indicative. The default "
        "(`GraceTrainConfig.trie_loss`) follows this table.", GRACE_TRIE_RUNS)


GRACE_HEADS_RUNS = ("grace_heads_ctrl_s0.json", "grace_heads_ctrl_s1.json", "grace_heads_tied_s0.json",
                    "grace_heads_tied_s1.json", "grace_heads_ihyb_s0.json", "grace_heads_ihyb_s1.json",
                    "grace_heads_fit16_s0.json", "grace_heads_fit16_s1.json", "grace_heads_dense_s0.json",
                    "grace_heads_dense_s1.json", "grace_heads_sasrec_s0.json", "grace_heads_sasrec_s1.json")


def _grace_heads() -> str:
    return _grace_build_runs(
        "GRACE's output head and codebooks at the build's budget, beside SASRec at the same budget",
        "All on MovieLens-100k at the build's budget (6 epochs of windows of 32 events, lr 3e-3, batch 32, "
        "patience 2 on 300 validation users), two seeds each, leave-last-out, all 943 users scored. `_ctrl`: "
        "today's defaults (trie loss, event memory, one-block JSA). `_tied`: the output head shares the token "
        "embeddings (`--grace tied_head=true`). `_ihyb`: a dense item head beside the decoder, trained with a "
        "full softmax over the catalog after every event, and retrieval ranking the union of the beam's and the "
        "item head's top 20 by the sum of both log-probabilities (`--grace item_head=true`; LIGER / COBRA "
        "style). `_fit16`: codebooks fitted to the catalog (`--grace semantic_headroom=16`: 30 codes per level "
        "instead of 256). `grace_dense_dn`: dense causal attention instead of JSA. `sasrec`: the baseline, "
        "same budget. None of the options moves HR@10 beyond the two seeds' spread of the control, so none became "
        "a default; at this budget SASRec and GRACE are level, SASRec in about a tenth of GRACE's training time. "
        "Runs of the tied, item-head, dense, "
        "control and SASRec rows were made with the code of commit 0fbe4f7 before it was committed ('+uncommitted "
        "changes' below). Two runs shared the 2 cores at a time, so seconds are indicative.", GRACE_HEADS_RUNS)


def _in_benchmarks(name: str, render: Callable[[], str]) -> Callable[[], str]:
    """docs/results/<name>.md as a BENCHMARKS.md section: image links from the repository root."""
    def section() -> str:
        from evaluation.evaluate import benchmark_section  # noqa: PLC0415

        return benchmark_section(render(), (RESULTS / f"{name}.md").relative_to(ROOT))

    return section


# BENCHMARKS.md section name -> its rendering (sections appear in the file between `<!-- name: begin/end -->`).
SECTIONS: dict[str, Callable[[], str]] = {
    "load_recommend": _recommend_load,
    "load_throughput": _in_benchmarks("throughput", _throughput),
    "load_long_history": _in_benchmarks("throughput_long", _throughput_long),
    "load_latency": _latency,
    "perf_sweep": _in_benchmarks("perf_sweep", _perf_sweep),
    "perf_sweep_direct": _in_benchmarks("perf_sweep_direct", _perf_sweep_direct),
    "queue_delay": _in_benchmarks("queue_delay", _queue_delay),
    "queue_policy": _in_benchmarks("queue_policy", _queue_policy),
    "ragged_batch": _in_benchmarks("ragged_batch", _ragged_batch),
    "soak": _soak,
    "grace_quality": _grace_section,
    "grace_sim": _in_benchmarks("grace_sim", lambda: _grace("grace_sim")),
    "grace_time": _in_benchmarks("grace_time", lambda: _grace("grace_time")),
    "grace_event_memory": _in_benchmarks("grace_event_memory", _grace_event_memory),
    "grace_path": _in_benchmarks("grace_path", _grace_path),
    "grace_trie": _in_benchmarks("grace_trie", _grace_trie),
    "grace_heads": _in_benchmarks("grace_heads", _grace_heads),
    "grace_batch": _in_benchmarks("grace_batch", _grace_batch),
    "build_report": _builds,
    "pipeline_quality": _pipeline,
    "pipeline_quality_movielens": _pipeline_movielens,
    "clip": _in_benchmarks("clip", _clip),
    "ctr": _in_benchmarks("ctr", _ctr),
    "ann_sweep": _in_benchmarks("ann_sweep", _ann_sweep),
    "kernels_cpu": _in_benchmarks("kernels_cpu", _kernels_cpu),
    "jsa_compute": _in_benchmarks("jsa_compute", _jsa_compute),
    "onnx_fold": _in_benchmarks("onnx_fold", _onnx_fold),
    "softmax_floor": _in_benchmarks("softmax_floor", _softmax_floor),
}
# Sections of other documents: path under the repository root -> {section name: renderer}.
DOC_SECTIONS: dict[str, dict[str, Callable[[], str]]] = {
    "docs/operations.md": {"pod_figures": _operations_pod},
}
# docs/results/*.md rendered from the result file beside them.
FILES: dict[str, Callable[[], str]] = {
    "grace.md": lambda: _grace("grace"),
    "grace_sasrec_b128.md": lambda: _grace("grace_sasrec_b128"),
    "grace_sim.md": lambda: _grace("grace_sim"),
    "grace_time.md": lambda: _grace("grace_time"),
    "grace_build_lr.md": _grace_build_lr,
    "grace_batch.md": _grace_batch,
    "grace_event_memory.md": _grace_event_memory,
    "grace_path.md": _grace_path,
    "grace_trie.md": _grace_trie,
    "grace_heads.md": _grace_heads,
    "pipeline_quality.md": _pipeline,
    "pipeline_quality_movielens.md": _pipeline_movielens,
    "builds.md": _builds,
    "throughput.md": _throughput,
    "throughput_long.md": _throughput_long,
    "perf_sweep.md": _perf_sweep,
    "perf_sweep_direct.md": _perf_sweep_direct,
    "queue_delay.md": _queue_delay,
    "queue_policy.md": _queue_policy,
    "ragged_batch.md": _ragged_batch,
    "clip.md": _clip,
    "ctr.md": _ctr,
    "ann_sweep.md": _ann_sweep,
    "kernels_cpu.md": _kernels_cpu,
    "kernels_cpu.csv": _kernels_cpu_csv,
    "jsa_compute.md": _jsa_compute,
    "jsa_compute.csv": _jsa_compute_csv,
    "onnx_fold.md": _onnx_fold,
    "softmax_floor.md": _softmax_floor,
}


def _doc_section(text: str, content: str, name: str, path: Path) -> str:
    """`text` with what lies between its markers `<!-- name: begin -->` / `end` replaced by `content`."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    if begin not in text or end not in text:
        raise ValueError(f"{path}: markers {begin} / {end} missing")
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{content}{end}{rest.split(end, 1)[1]}"


def rendered() -> tuple[str, dict[Path, str]]:
    """BENCHMARKS.md and each generated file as the committed result files make them."""
    from evaluation.pipeline_quality import with_section  # noqa: PLC0415

    text = BENCHMARKS.read_text()
    for name, render in SECTIONS.items():
        text = with_section(text, render(), name)
    files = {RESULTS / name: render() for name, render in FILES.items()}
    for name, sections in DOC_SECTIONS.items():
        path = ROOT / name
        doc = path.read_text()
        for name, render in sections.items():
            doc = _doc_section(doc, render(), name, path)
        files[path] = doc
    return text, files


def differences() -> list[str]:
    benchmarks, files = rendered()
    stale = [] if benchmarks == BENCHMARKS.read_text() else [BENCHMARKS.name]
    stale += [str(p.relative_to(ROOT)) for p, text in files.items() if not p.exists() or p.read_text() != text]
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything differs")
    args = parser.parse_args(argv)
    stale = differences()
    if args.check:
        for path in stale:
            print(f"{path}: differs from what its committed result files render (python -m evaluation.report)")
        return 1 if stale else 0
    benchmarks, files = rendered()
    BENCHMARKS.write_text(benchmarks)
    for path, text in files.items():
        path.write_text(text)
    print("rewrote: " + (", ".join(stale) if stale else "nothing (all up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
