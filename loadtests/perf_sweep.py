"""NVIDIA perf_analyzer sweeps of a running server: throughput and latency percentiles of `recommend` (and of
`score_ads` with a fixed number of campaigns) at each concurrency, with the server-side queue and compute time of
every step of the ensemble, as perf_analyzer reads them from Triton's statistics.

    python -m loadtests.perf_sweep --url 127.0.0.1:8001 --out docs/results/perf_sweep.json
    python -m loadtests.perf_sweep --from-result docs/results/perf_sweep.json     # render only

perf_analyzer is the binary of the tritonclient 2.41.0 wheel (the newest wheel that ships it), fetched once with
`pip download` into ~/.cache/recserve/perf_analyzer; it links libb64 and libcudart, which the installed
nvidia-pytriton wheel carries (nvidia_pytriton.libs) under hashed names: they are linked there under the names
the binary asks for. Requests are seeded synthetic histories of the server's published example items
(`clients.synthetic_history`), written as perf_analyzer input data; the load generator shares the machine's cores
with the server (stated in the result).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from clients import RecommendClient, synthetic_history
from clients.ads_client import AdsClient
from evaluation.provenance import line, provenance
from serving import graph

WHEEL_VERSION = "2.41.0"
CACHE = Path.home() / ".cache" / "recserve" / "perf_analyzer"
BINARY_IN_WHEEL = f"tritonclient-{WHEEL_VERSION}.data/data/bin/perf_analyzer"
# The shared libraries perf_analyzer asks for, and the pattern of the file in nvidia_pytriton.libs that provides it.
LINKED_LIBRARIES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
PASS_LINE = re.compile(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec\. Avg latency: (\d+) usec")
STEP_LINE = re.compile(r"^\s+(\w+), version: \S+\n(?:\s+.*\n)*?\s+Avg request latency: (\d+) usec \(overhead (\d+) "
                       r"usec \+ queue (\d+) usec \+ compute input (\d+) usec \+ compute infer (\d+) usec \+ "
                       r"compute output (\d+) usec\)", re.MULTILINE)


def pytriton_libs() -> Path:
    import pytriton  # noqa: PLC0415 (the wheel that carries tritonserver and these libraries)

    libs = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise FileNotFoundError(f"{libs} is missing: perf_analyzer's libraries come from the nvidia-pytriton wheel")
    return libs


def perf_analyzer(cache: Path = CACHE) -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary (downloaded and unpacked on first use) and the environment it runs in."""
    root = cache / WHEEL_VERSION
    binary = root / BINARY_IN_WHEEL
    if not binary.exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        f"tritonclient=={WHEEL_VERSION}", "-d", str(root)], check=True)
        wheel = next(root.glob(f"tritonclient-{WHEEL_VERSION}-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(BINARY_IN_WHEEL, root)
        binary.chmod(0o755)
    libs, linked = pytriton_libs(), root / "lib"
    linked.mkdir(exist_ok=True)
    for name, pattern in LINKED_LIBRARIES.items():
        found = sorted(libs.glob(pattern))
        if not found:
            raise FileNotFoundError(f"{libs} has no {pattern} (perf_analyzer needs it as {name})")
        target = linked / name
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(found[0])
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join([str(linked), str(libs), os.environ.get("LD_LIBRARY_PATH", "")]))
    return binary, env


def tensor(values: list[int]) -> dict:
    return {"content": values, "shape": [len(values)]}


def input_data(url: str, model: str, requests: int, min_events: int, max_events: int, k: int, campaigns: int,
               seed: int) -> dict:
    """perf_analyzer's --input-data: `requests` seeded histories (one request each) for `model`."""
    rng = random.Random(seed)
    client_type = AdsClient if model == graph.SCORE_ADS.name else RecommendClient
    with client_type(url) as client:
        limits = client.limits()
    rows = []
    for _ in range(requests):
        events = synthetic_history(limits, rng.randint(min_events, max_events), rng)
        row = {graph.ITEM_IDS.name: tensor([e.item_id for e in events]),
               graph.BEHAVIORS.name: tensor([int(e.behavior) for e in events]),
               graph.TIMESTAMPS.name: tensor([e.timestamp for e in events])}
        if model == graph.SCORE_ADS.name:
            if limits.num_campaigns < campaigns:
                raise ValueError(f"--campaigns {campaigns}: the server has {limits.num_campaigns} campaigns")
            row[graph.CAMPAIGN_IDS.name] = tensor(sorted(rng.sample(range(limits.num_campaigns), campaigns)))
        else:
            row[graph.K.name] = tensor([k])
        rows.append(row)
    return {"data": rows}


def parse_steps(stdout: str) -> dict[str, dict[str, float]]:
    """The composing models' server-side times (ms) that perf_analyzer prints for an ensemble."""
    steps = {}
    for m in STEP_LINE.finditer(stdout):
        total, overhead, queue, c_in, infer, c_out = (int(v) / 1000.0 for v in m.groups()[1:])
        steps[m.group(1)] = {"avg_ms": total, "queue_ms": queue, "compute_ms": c_in + infer + c_out}
    return steps


def run_point(binary: Path, env: dict, url: str, model: str, data_file: Path, concurrency: int,
              interval_ms: int, max_trials: int, stability: int) -> dict:
    """One perf_analyzer measurement at one concurrency; latencies in ms."""
    with tempfile.NamedTemporaryFile(suffix=".csv") as report:
        cmd = [str(binary), "-v", "-m", model, "-u", url, "-i", "grpc", "--input-data", str(data_file), "-b", "1",
               "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms),
               "--stability-percentage", str(stability), "--max-trials", str(max_trials), "-f", report.name]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        rows = list(csv.DictReader(open(report.name))) if proc.returncode == 0 else []
    output = proc.stdout + proc.stderr
    point = {"model": model, "concurrency": concurrency}
    if rows:
        row = rows[0]
        return {**point, "stable": True, "req_per_s": round(float(row["Inferences/Second"]), 1),
                **{f"p{p}_ms": round(int(row[f"p{p} latency"]) / 1000.0, 2) for p in (50, 90, 95, 99)},
                "avg_ms": None, "steps": parse_steps(proc.stdout)}
    passes = PASS_LINE.findall(output)
    if "Failed to obtain stable measurement" in output and passes:
        # No window agreed with the others: the last window's throughput and mean, marked unstable.
        throughput, avg_us = passes[-1]
        return {**point, "stable": False, "req_per_s": round(float(throughput), 1),
                **{f"p{p}_ms": None for p in (50, 90, 95, 99)}, "avg_ms": round(int(avg_us) / 1000.0, 2),
                "steps": {}}
    raise RuntimeError(f"perf_analyzer failed ({proc.returncode}) on {model} at concurrency {concurrency}: "
                       f"{output[-800:]}")


def render(result: dict) -> str:
    args = result["args"]
    lines = ["# perf_analyzer sweep", "",
             f"- {line(result)}",
             f"- NVIDIA perf_analyzer {WHEEL_VERSION} over gRPC, {args['requests']} seeded histories of "
             f"{args['min_events']}-{args['max_events']} events (k={args['k']}; score_ads with {args['campaigns']} "
             f"campaigns), {args['interval_ms']} ms windows until 3 agree within {args['stability']}% (at most "
             f"{args['max_trials']}); the load generator shares the cores with the server", "",
             "| model | concurrency | req/s | p50 ms | p90 ms | p99 ms | stable |", "|---|---|---|---|---|---|---|"]
    for r in result["points"]:
        ms = " | ".join("" if r[f"p{p}_ms"] is None else f"{r[f'p{p}_ms']:.1f}" for p in (50, 90, 99))
        stable = "yes" if r["stable"] else f"no (last window: mean {r['avg_ms']:.1f} ms)"
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['req_per_s']:.1f} | {ms} | {stable} |")
    ensemble = [r for r in result["points"] if r["model"] == graph.RECOMMEND.name and r["steps"]]
    if ensemble:
        names = sorted({name for r in ensemble for name in r["steps"]}, key=_graph_order)
        lines += ["", f"Server-side time per step of `{graph.RECOMMEND.name}` (ms, average per request: queue + "
                      "compute), as Triton's statistics report it:", "",
                  "| concurrency | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
        for r in ensemble:
            lines.append(f"| {r['concurrency']} | " + " | ".join(
                f"{r['steps'][n]['queue_ms']:.1f} + {r['steps'][n]['compute_ms']:.1f}" if n in r["steps"] else ""
                for n in names) + " |")
    return "\n".join(lines) + "\n"


def _graph_order(name: str) -> int:
    order = [step.name for step in graph.RECOMMEND.steps]
    return order.index(name) if name in order else len(order)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.perf_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="the server's gRPC address")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--ads-concurrency", type=int, nargs="*", default=[1, 4],
                        help="score_ads concurrencies (none: skip score_ads)")
    parser.add_argument("--requests", type=int, default=100, help="distinct requests in the input data")
    parser.add_argument("--min-events", type=int, default=5)
    parser.add_argument("--max-events", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--campaigns", type=int, default=100, help="campaigns per score_ads request")
    parser.add_argument("--interval-ms", type=int, default=4000, help="perf_analyzer measurement window")
    parser.add_argument("--stability", type=int, default=50, help="percent within which 3 windows must agree "
                        "(a shared 2-core machine: p99 spikes move the average latency a lot)")
    parser.add_argument("--max-trials", type=int, default=10, help="windows before a point is recorded unstable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the result (JSON, with provenance) here")
    parser.add_argument("--from-result", type=Path, help="render a result file and exit")
    args = parser.parse_args(argv)
    if args.from_result:
        print(render(json.loads(args.from_result.read_text())))
        return 0
    if not args.url:
        parser.error("--url is required (or --from-result)")
    binary, env = perf_analyzer()
    result = {**provenance("loadtests.perf_sweep", argv),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "points": []}
    plan = [(graph.RECOMMEND.name, c) for c in args.concurrency] + [(graph.SCORE_ADS.name, c)
                                                                     for c in args.ads_concurrency]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for model in dict.fromkeys(m for m, _ in plan):
            files[model] = Path(tmp) / f"{model}.json"
            files[model].write_text(json.dumps(input_data(args.url, model, args.requests, args.min_events,
                                                          args.max_events, args.k, args.campaigns, args.seed)))
        for model, concurrency in plan:
            point = run_point(binary, env, args.url, model, files[model], concurrency, args.interval_ms,
                              args.max_trials, args.stability)
            print(f"{model} c={concurrency}: {point['req_per_s']} req/s, p50 {point['p50_ms']} ms, "
                  f"p99 {point['p99_ms']} ms", flush=True)
            result["points"].append(point)
    print(render(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
