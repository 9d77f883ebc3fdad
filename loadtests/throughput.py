"""Latency and throughput of `recommend` in one run: the served pipeline against the very same step code run in
process (numpy + ONNX Runtime, no Triton, no gRPC), then closed-loop load at several concurrencies.

    python -m loadtests.throughput --host 127.0.0.1:8001 --repository model_repository \
        --out docs/results/throughput.json --plot docs/results/throughput.png

1. Concurrency 1, interleaved: each seeded request is answered in process and then by the server, back to back,
   so both see the same machine state; p50/p99 of each and their ratio.
2. Closed loop at each concurrency (default 1 4 8 16 32): that many client threads, each with its own gRPC
   connection, send requests back to back for --duration seconds; answers per second, p50/p99, errors.
   The load generator runs on the same machine as the server (stated in the result).
3. With --history-lengths 32 128 256: step 1 again for histories of exactly each length (the server's
   max_history at most), --length-requests requests each: how latency grows with the history.
Histories are drawn from the server's published example items, --min-events..--max-events events each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import threading
import time
from pathlib import Path

import numpy as np

from clients import RecommendClient, synthetic_history
from evaluation.provenance import line, provenance
from serving import graph
from serving.contract import BUILD_MANIFEST, ServingLimits

WARMUP = 20


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "requests": len(ms)}


def in_process_pipeline(repository: Path):
    """recommend's steps from the repository's own files, run in graph order by the served step classes."""
    from serving.steps import IMPLEMENTATIONS  # noqa: PLC0415 (the benchmark's in-process side only)

    limits = ServingLimits.from_dict(json.loads((repository / BUILD_MANIFEST).read_text())["limits"])
    seconds: dict[str, list[float]] = {step.name: [] for step in graph.RECOMMEND.steps}

    def timed(name, run):
        def call(**inputs):
            began = time.perf_counter()
            out = run(**inputs)
            seconds[name].append(time.perf_counter() - began)
            return out
        return call

    steps = {step.name: timed(step.name, IMPLEMENTATIONS[step.name].create(repository / step.name / "1", limits))
             for step in graph.RECOMMEND.steps}

    def recommend(events, k: int):
        request = {graph.ITEM_IDS.name: np.array([e.item_id for e in events], np.int64),
                   graph.BEHAVIORS.name: np.array([int(e.behavior) for e in events], np.int32),
                   graph.TIMESTAMPS.name: np.array([e.timestamp for e in events], np.int64),
                   graph.K.name: np.array([k], np.int32)}
        return graph.run_ensemble(graph.RECOMMEND, steps, request)[graph.TOP_ITEM_IDS.name]

    recommend.step_seconds = seconds  # each step's time in process, per request, in call order
    return recommend


STAT_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


def server_statistics(host: str) -> dict[str, dict[str, list[int]]]:
    """Triton's cumulative statistics of every model: {model: {"success"|part: [count, ns]}}."""
    from tritonclient.grpc import InferenceServerClient  # noqa: PLC0415

    client = InferenceServerClient(host)
    try:
        stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
    finally:
        client.close()
    return {m["name"]: {part: [int(m["inference_stats"].get(part, {}).get("count", 0)),
                               int(m["inference_stats"].get(part, {}).get("ns", 0))]
                        for part in ("success",) + STAT_PARTS} for m in stats if "inference_stats" in m}


def per_request_ms(before: dict, after: dict, models: list[str]) -> dict[str, dict[str, float]]:
    """Each model's mean time per successful request between two snapshots: the server's side of the served
    latency, split into queueing and compute (Triton's statistics extension)."""
    out = {}
    for model in models:
        a, b = before.get(model), after.get(model)
        if a is None or b is None:
            continue
        n = b["success"][0] - a["success"][0]
        if n <= 0:
            continue
        out[model] = {"requests": n, **{part: round((b[part][1] - a[part][1]) / n / 1e6, 3)
                                        for part in ("success",) + STAT_PARTS}}
    return out


def interleaved(host: str, repository: Path, histories: list, k: int, direct_host: str | None = None) -> dict:
    """In process, then served (then, with direct_host, served by tritonserver's own port, past the proxy),
    request by request: every side sees the same machine state."""
    local = in_process_pipeline(repository)
    sides = {"in_process": [], "served": [], **({"served_direct": []} if direct_host else {})}
    same = 0
    with contextlib.ExitStack() as stack:
        clients = {"served": stack.enter_context(RecommendClient(host))}
        if direct_host:
            clients["served_direct"] = stack.enter_context(RecommendClient(direct_host))
        for events in histories[:WARMUP]:
            local(events, k)
            for client in clients.values():
                client.recommend(events, k)
        stats_before = server_statistics(direct_host or host)
        for events in histories:
            started = time.perf_counter()
            mine = local(events, k)
            sides["in_process"].append(time.perf_counter() - started)
            for name, client in clients.items():
                started = time.perf_counter()
                theirs = client.recommend(events, k)
                sides[name].append(time.perf_counter() - started)
                same += int(np.array_equal(mine, [item.item_id for item in theirs.items]))
    served_steps = per_request_ms(stats_before, server_statistics(direct_host or host),
                                  [graph.RECOMMEND.name] + [step.name for step in graph.RECOMMEND.steps])
    stats = {name: percentiles(seconds) for name, seconds in sides.items()}
    a, b = stats["in_process"], stats["served"]
    by_step = {name: round(1000 * float(np.median(times[WARMUP:])), 3) for name, times in local.step_seconds.items()}
    result = {**stats, "in_process_step_p50_ms": by_step, "server_side_mean_ms": served_steps,
              "served_over_in_process_p50": round(b["p50_ms"] / a["p50_ms"], 3),
              "served_over_in_process_p99": round(b["p99_ms"] / a["p99_ms"], 3),
              "same_top_k": round(same / (len(histories) * len(clients)), 4)}
    if direct_host:
        result["direct_over_in_process_p50"] = round(stats["served_direct"]["p50_ms"] / a["p50_ms"], 3)
    return result


def closed_loop(host: str, histories: list, k: int, concurrency: int, duration_s: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(slot: int) -> None:
        rng = random.Random(slot)
        with RecommendClient(host, timeout_s=30.0) as client:
            for events in histories[:3]:  # a warm connection before the clock starts
                client.recommend(events, k)
            start.wait()
            while time.perf_counter() < stop_at[0]:
                events = histories[rng.randrange(len(histories))]
                began = time.perf_counter()
                try:
                    client.recommend(events, k)
                    latencies[slot].append(time.perf_counter() - began)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(str(exc)[:200])

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 3600  # until the barrier releases every worker at once
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + duration_s
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    answered = [s for per in latencies for s in per]
    return {"concurrency": concurrency, "seconds": round(elapsed, 2),
            "req_per_s": round(len(answered) / elapsed, 1), **percentiles(answered),
            "errors": len(errors), "first_errors": errors[:3]}


def render(result: dict) -> str:
    c1 = result["interleaved"]
    lines = [f"- {line(result)}",
             f"- histories of {result['args']['min_events']}-{result['args']['max_events']} events, k="
             f"{result['args']['k']}; the load generator runs on the same cores as the server", "",
             "| concurrency 1, interleaved | requests | p50 ms | p99 ms | mean ms |", "|---|---|---|---|---|"]
    for name in ("in_process", "served", "served_direct"):
        if name not in c1:
            continue
        r = c1[name]
        label = {"in_process": "in-process", "served": "served", "served_direct": "served, tritonserver's own port"}
        lines.append(f"| {label[name]} | {r['requests']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['mean_ms']:.2f} |")
    if c1.get("in_process_step_p50_ms"):
        steps = c1["in_process_step_p50_ms"]
        lines += ["", "In process, p50 per step (ms): " + ", ".join(f"{name} {ms:.2f}" for name, ms in steps.items())]
    if c1.get("server_side_mean_ms"):
        lines += ["", "Served, the server's side (Triton statistics over the measured requests; means, ms; compute "
                  "infer of a python step includes its stub round trip):", "",
                  "| model | requests | total | queue | compute input | compute infer | compute output |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in c1["server_side_mean_ms"].items():
            lines.append(f"| {name} | {r['requests']} | {r['success']:.2f} | {r['queue']:.2f} | "
                         f"{r['compute_input']:.2f} | {r['compute_infer']:.2f} | {r['compute_output']:.2f} |")
    lines += ["", f"Served / in-process: p50 {c1['served_over_in_process_p50']:.2f}x, p99 "
              f"{c1['served_over_in_process_p99']:.2f}x"
              + (f" (past the proxy, straight to tritonserver: p50 {c1['direct_over_in_process_p50']:.2f}x)"
                 if "direct_over_in_process_p50" in c1 else "")
              + f"; same top-{result['args']['k']} for {100 * c1['same_top_k']:.0f}% of the requests."]
    if result["closed_loop"]:
        lines += ["", "| concurrency | req/s | p50 ms | p99 ms | requests | errors |", "|---|---|---|---|---|---|"]
    for r in result["closed_loop"]:
        lines.append(f"| {r['concurrency']} | {r['req_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['requests']} | {r['errors']} |")
    if result.get("by_history_length"):
        lines += ["", "By history length, concurrency 1, interleaved:", "",
                  "| events | requests | in-process p50 ms | in-process p99 ms | served p50 ms | served p99 ms | "
                  "served / in-process p50 | same top-k |", "|---|---|---|---|---|---|---|---|"]
        for r in result["by_history_length"]:
            a, b = r["in_process"], r["served"]
            lines.append(f"| {r['events']} | {b['requests']} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} | "
                         f"{b['p50_ms']:.2f} | {b['p99_ms']:.2f} | {r['served_over_in_process_p50']:.2f}x | "
                         f"{100 * r['same_top_k']:.0f}% |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = result["closed_loop"]
    c = [r["concurrency"] for r in rows]
    fig, left = plt.subplots(figsize=(6, 3.5))
    left.plot(c, [r["req_per_s"] for r in rows], "o-", color="tab:blue", label="req/s")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("answers per second", color="tab:blue")
    right = left.twinx()
    right.plot(c, [r["p50_ms"] for r in rows], "s--", color="tab:orange", label="p50")
    right.plot(c, [r["p99_ms"] for r in rows], "^--", color="tab:red", label="p99")
    right.set_ylabel("latency ms", color="tab:red")
    right.legend(loc="upper left")
    left.set_title(f"recommend, closed loop ({result['commit']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", required=True, help="the server's gRPC address")
    parser.add_argument("--direct-host", help="tritonserver's own gRPC address behind the proxy (the launcher "
                        "prints it): concurrency 1 is then also measured past the proxy")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the repository the server serves (the in-process side loads the same files)")
    parser.add_argument("--requests", type=int, default=300, help="interleaved requests at concurrency 1")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 8, 16, 32],
                        help="closed-loop concurrencies (none: only the interleaved comparisons)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per closed-loop run")
    parser.add_argument("--min-events", type=int, default=5)
    parser.add_argument("--max-events", type=int, default=16)
    parser.add_argument("--history-lengths", type=int, nargs="*", default=[],
                        help="also measure concurrency 1 at exactly these history lengths (events)")
    parser.add_argument("--length-requests", type=int, default=100, help="interleaved requests per history length")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the result (JSON, with provenance) here")
    parser.add_argument("--plot", type=Path, help="write the closed-loop plot (PNG) here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with RecommendClient(args.host) as client:
        limits = client.limits()
    too_long = [n for n in args.history_lengths if not 1 <= n <= limits.max_history]
    if too_long:
        parser.error(f"--history-lengths {too_long}: the server serves 1..{limits.max_history} events")
    histories = [synthetic_history(limits, rng.randint(args.min_events, args.max_events), rng)
                 for _ in range(max(args.requests, WARMUP))]
    result = {**provenance("loadtests.throughput", argv), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                   for k, v in vars(args).items()}}
    manifest = json.loads((args.repository / BUILD_MANIFEST).read_text())
    result["build"] = {"max_history": manifest["limits"]["max_history"], "build_seconds": manifest.get("build_seconds"),
                       "grace_variant": manifest.get("grace", {}).get("variant"),
                       "dataset": manifest.get("dataset", {}).get("name")}
    result["interleaved"] = interleaved(args.host, args.repository, histories[:args.requests], args.k,
                                        args.direct_host)
    result["closed_loop"] = [closed_loop(args.host, histories, args.k, c, args.duration) for c in args.concurrency]
    if result["closed_loop"]:
        best = max(result["closed_loop"], key=lambda r: r["req_per_s"])
        result["best"] = {"concurrency": best["concurrency"], "req_per_s": best["req_per_s"],
                          "over_concurrency_1": round(best["req_per_s"] / result["closed_loop"][0]["req_per_s"], 2)
                          if result["closed_loop"][0]["concurrency"] == 1 else None}
    result["by_history_length"] = []
    for events in args.history_lengths:
        same_length = [synthetic_history(limits, events, rng) for _ in range(args.length_requests)]
        result["by_history_length"].append({"events": events, **interleaved(args.host, args.repository,
                                                                            same_length, args.k)})
    print(render(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot and result["closed_loop"]:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
