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

Where the server runs on this machine (`--server-pid`, or the only tritonserver running), each point also
records the CPU time it cost per request, by process: tritonserver itself, each step's python stub, and
perf_analyzer (the load generator): /proc's user + system time over the point's run divided by the requests it
completed (throughput x run time). That says which step a request's CPU goes to, hence where throughput on few
cores comes from.
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
import resource
import tempfile
import time
import zipfile
from pathlib import Path

from clients import RecommendClient, synthetic_history
from clients.ads_client import AdsClient
from evaluation.provenance import line, provenance
from serving import graph
from serving.launcher import python_stubs

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


def server_processes(pid: int | None = None) -> dict[int, str]:
    """tritonserver (`pid`, or the only tritonserver running here) and its python stubs, labelled "tritonserver"
    and the model each stub serves. Empty when no single server is found."""
    if pid is None:
        servers = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "comm").read_text().strip() == "tritonserver":
                    servers.append(int(entry.name))
            except OSError:  # exited meanwhile
                continue
        if len(servers) != 1:
            return {}
        pid = servers[0]
    if not Path(f"/proc/{pid}").is_dir():
        return {}
    return {pid: "tritonserver", **python_stubs(pid)}


def cpu_seconds(processes: dict[int, str]) -> dict[str, float]:
    """User + system CPU seconds so far, summed per label (a step's instances together)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for pid, label in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        totals[label] = totals.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_per_request(before: dict[str, float], after: dict[str, float], load_generator_s: float,
                    wall_s: float, req_per_s: float) -> dict[str, float]:
    """CPU ms per request of each process over a run of wall_s seconds at req_per_s."""
    requests = req_per_s * wall_s
    if requests <= 0:
        return {}
    used = {label: after[label] - before.get(label, 0.0) for label in after}
    used["perf_analyzer"] = load_generator_s
    return {label: round(1000.0 * seconds / requests, 2) for label, seconds in used.items()}


def run_point(binary: Path, env: dict, url: str, model: str, data_file: Path, concurrency: int,
              interval_ms: int, max_trials: int, stability: int, processes: dict[int, str] | None = None) -> dict:
    """One perf_analyzer measurement at one concurrency; latencies in ms; with `processes` (server_processes),
    the CPU ms per request of each of them and of perf_analyzer."""
    cpu_before, children_before, started = cpu_seconds(processes or {}), _children_cpu(), time.perf_counter()
    point = _perf_analyzer_point(binary, env, url, model, data_file, concurrency, interval_ms, max_trials, stability)
    if processes:
        point["cpu_ms_per_request"] = cpu_per_request(cpu_before, cpu_seconds(processes),
                                                      _children_cpu() - children_before,
                                                      time.perf_counter() - started, point["req_per_s"])
    return point


def _perf_analyzer_point(binary: Path, env: dict, url: str, model: str, data_file: Path, concurrency: int,
                         interval_ms: int, max_trials: int, stability: int) -> dict:
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


def render(result: dict, title: str = "perf_analyzer sweep") -> str:
    args = result["args"]
    lines = [f"# {title}", "",
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
        names = sorted(dict.fromkeys(name for r in ensemble for name in r["steps"]),
                       key=lambda name: _step_order(result, name))
        lines += ["", f"Server-side time per step of `{graph.RECOMMEND.name}` (ms, average per request: queue + "
                      "compute), as Triton's statistics report it:", "",
                  "| concurrency | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
        for r in ensemble:
            lines.append(f"| {r['concurrency']} | " + " | ".join(
                f"{r['steps'][n]['queue_ms']:.1f} + {r['steps'][n]['compute_ms']:.1f}" if n in r["steps"] else ""
                for n in names) + " |")
    with_cpu = [r for r in result["points"] if r.get("cpu_ms_per_request")]
    if with_cpu:
        names = sorted(dict.fromkeys(n for r in with_cpu for n in r["cpu_ms_per_request"]),
                       key=lambda name: _cpu_order(result, name))
        lines += ["", "CPU ms per request by process (user + system time over the point's run / requests completed; "
                      "perf_analyzer is the load generator on the same cores):", "",
                  "| model | concurrency | " + " | ".join(names) + " | total |", "|---" * (3 + len(names)) + "|"]
        for r in with_cpu:
            cpu = r["cpu_ms_per_request"]
            lines.append(f"| {r['model']} | {r['concurrency']} | " + " | ".join(
                f"{cpu[n]:.2f}" if n in cpu else "" for n in names) + f" | {sum(cpu.values()):.2f} |")
    return "\n".join(lines) + "\n"


def _served_steps(result: dict) -> list[str]:
    """The served steps in graph order as the sweep recorded them (a later graph must not re-order its table)."""
    return result["served_steps"]


def _cpu_order(result: dict, name: str) -> int:
    """tritonserver first, then the steps in graph order, then the rest in the result's order (perf_analyzer
    last); a stable sort keeps ties in the result's order."""
    steps = _served_steps(result)
    if name == "tritonserver":
        return 0
    return 1 + steps.index(name) if name in steps else (100 if name == "perf_analyzer" else 99)


def _step_order(result: dict, name: str) -> int:
    steps = _served_steps(result)
    return steps.index(name) if name in steps else len(steps)


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
    parser.add_argument("--server-pid", type=int, help="the tritonserver process whose CPU (and its python stubs') "
                        "each point records per request (default: the only tritonserver running here)")
    parser.add_argument("--out", type=Path, help="write the result (JSON, with provenance) here")
    parser.add_argument("--from-result", type=Path, help="render a result file and exit")
    args = parser.parse_args(argv)
    if args.from_result:
        print(render(json.loads(args.from_result.read_text())))
        return 0
    if not args.url:
        parser.error("--url is required (or --from-result)")
    binary, env = perf_analyzer()
    processes = server_processes(args.server_pid)
    if not processes:
        print("CPU per request not recorded: no single tritonserver on this machine (--server-pid names one)",
              file=sys.stderr)
    result = {**provenance("loadtests.perf_sweep", argv),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              # the served steps in graph order when the sweep ran: a later graph must not re-order old tables
              "served_steps": [step.name for step in graph.SERVED_STEPS], "points": []}
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
                              args.max_trials, args.stability, processes)
            print(f"{model} c={concurrency}: {point['req_per_s']} req/s, p50 {point['p50_ms']} ms, "
                  f"p99 {point['p99_ms']} ms", flush=True)
            result["points"].append(point)
    print(render(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
