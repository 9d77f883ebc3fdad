"""Bounded soak: a fixed request rate for a fixed time, reported per window (failures, p50/p99 latency) with the
memory (RSS) of tritonserver, its python stubs and the proxy at the start and at the end.

    python -m loadtests.soak --repository model_repository --rate 40 --duration 600 \
        --out docs/results/soak.json --benchmarks BENCHMARKS.md

With --repository it starts the server itself (the launcher's defaults: proxy, admin key, watchdog); with --url
it loads a running server (add --server-pid for its memory). The load is open-loop: requests are sent on
schedule whether or not earlier ones have answered, so a stall shows as latency and failures, not as a lower
rate. 90% `recommend`, 10% `score_ads`, histories drawn from what the server publishes. Exit status 1 when any
request failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clients import RecommendClient, synthetic_history
from clients.ads_client import AdsClient
from evaluation.pipeline_quality import with_section
from evaluation.provenance import line, provenance
from serving.launcher import TritonServer, free_ports, python_stubs
from serving.proxy import NginxProxy, ProxyError, ProxySettings

SECTION = "soak"  # BENCHMARKS.md's markers: <!-- soak: begin --> ... <!-- soak: end -->
log = logging.getLogger("loadtests.soak")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory(server_pid: int | None) -> dict[str, float] | None:
    """RSS in MiB of tritonserver and of each python stub (by model)."""
    if server_pid is None:
        return None
    out = {"tritonserver": rss_mib(server_pid)}
    for pid, model in sorted(python_stubs(server_pid).items(), key=lambda kv: kv[1]):
        out[f"stub {model}"] = rss_mib(pid)
    return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def soak(url: str, rate: float, duration_s: float, window_s: float, seed: int = 0, timeout_s: float = 10.0,
         server_pid: int | None = None, workers: int = 64) -> dict:
    rng = random.Random(seed)
    recommend, ads = RecommendClient(url, timeout_s=timeout_s), AdsClient(url, timeout_s=timeout_s)
    limits = recommend.limits()
    histories = [synthetic_history(limits, rng.randint(1, limits.max_history), rng) for _ in range(200)]
    try:
        campaigns = list(range(min(20, ads.limits().num_campaigns)))
    except Exception:  # noqa: BLE001 - a build without campaigns serves no score_ads: recommend only
        campaigns = []
    calls = []
    for i in range(int(rate * duration_s)):
        events = histories[i % len(histories)]
        if i % 10 == 9 and campaigns:
            arrays = ([e.item_id for e in events], [int(e.behavior) for e in events], [e.timestamp for e in events])
            calls.append(("score_ads", lambda a=arrays: ads.score_ads(*a, campaigns)))
        else:
            calls.append(("recommend", lambda e=events: recommend.recommend(e, 10)))
    results: list[tuple[float, float, str | None]] = []  # (scheduled offset, latency ms, error)
    lock = threading.Lock()

    def send(offset: float, call) -> None:
        started = time.perf_counter()
        try:
            call()
            error = None
        except Exception as exc:  # noqa: BLE001 - counted and reported
            error = str(exc).splitlines()[0][:200]
        with lock:
            results.append((offset, (time.perf_counter() - started) * 1000, error))

    memory_start = memory(server_pid)
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (_, call) in enumerate(calls):
            offset = i / rate
            delay = began + offset - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, offset, call)
    elapsed = time.perf_counter() - began
    memory_end = memory(server_pid)
    recommend.close()
    ads.close()

    windows = []
    for start in range(0, int(duration_s), int(window_s)):
        rows = [r for r in results if start <= r[0] < start + window_s]
        ok = [ms for _, ms, error in rows if error is None]
        windows.append({"start_s": start, "requests": len(rows), "failures": len(rows) - len(ok),
                        "p50_ms": _percentile(ok, 50), "p99_ms": _percentile(ok, 99)})
    errors: dict[str, int] = {}
    for _, _, error in results:
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
    latencies = [ms for _, ms, error in results if error is None]
    return {
        "requests": len(results), "failures": sum(errors.values()), "errors": errors,
        "achieved_rate": len(results) / elapsed, "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99), "median_window_p99_ms": statistics.median(
            [w["p99_ms"] for w in windows if w["p99_ms"] is not None] or [0.0]),
        "windows": windows, "memory_start_mib": memory_start, "memory_end_mib": memory_end,
    }


def render(result: dict) -> str:
    s, r = result["settings"], result["result"]
    lines = [
        "# Soak: a fixed request rate with the server's memory at start and end",
        "",
        f"{line(result)}.",
        "",
        f"{r['requests']} requests at {s['rate']:g} req/s for {s['duration_s']:g} s (open loop; 90% recommend, "
        f"10% score_ads): **{r['failures']} failed**; p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms.",
        "",
        "| window (from s) | requests | failures | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for w in r["windows"]:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {w['start_s']} | {w['requests']} | {w['failures']} | {fmt(w['p50_ms'])} | {fmt(w['p99_ms'])} |")
    if r["memory_start_mib"] and r["memory_end_mib"]:
        lines += ["", "| process | RSS at start (MiB) | RSS at end (MiB) |", "|---|---|---|"]
        for name, start in r["memory_start_mib"].items():
            end = r["memory_end_mib"].get(name)
            lines.append(f"| {name} | {start:.0f} | {'-' if end is None else f'{end:.0f}'} |")
    if r["errors"]:
        lines += ["", "Failures: " + "; ".join(f"{n} x {e}" for e, n in r["errors"].items())]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", type=Path, help="start a server on this model repository")
    where.add_argument("--url", help="load a running server (host:port)")
    parser.add_argument("--server-pid", type=int, help="with --url: tritonserver's pid, to report its memory")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    parser.add_argument("--out", type=Path, help="result JSON (with the command, commit, date and machine)")
    parser.add_argument("--benchmarks", type=Path, help="re-render BENCHMARKS.md's soak section from the result")
    parser.add_argument("--from-result", type=Path, help="only re-render --benchmarks from this result JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.from_result:
        result = json.loads(args.from_result.read_text())
    else:
        server = None
        if args.repository:
            try:
                NginxProxy.binary()
                proxy = ProxySettings()
            except ProxyError:
                proxy = None
            ports = free_ports(3)
            server = TritonServer(args.repository, grpc_port=ports[0], http_port=ports[1], metrics_port=ports[2],
                                  proxy=proxy)
            server.start(ready_timeout_s=300)
        try:
            url = server.grpc_url if server else args.url
            pid = server.pid if server else args.server_pid
            log.info("soak: %s req/s for %s s against %s", args.rate, args.duration, url)
            outcome = soak(url, args.rate, args.duration, args.window, server_pid=pid)
        finally:
            if server is not None:
                server.stop()
        result = {
            **provenance("loadtests.soak", argv),
            "settings": {"rate": args.rate, "duration_s": args.duration, "window_s": args.window,
                         "proxy": bool(server and server.proxy_settings)},
            "result": outcome,
        }
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    text = render(result)
    print(text)
    if args.benchmarks:
        args.benchmarks.write_text(with_section(args.benchmarks.read_text(), text, SECTION))
    return 1 if result["result"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
