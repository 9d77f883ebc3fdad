"""Run the locust load test headless (optionally several times) and summarize it.

    python -m loadtests.run --host 127.0.0.1:8001 --users 4 --duration 20 [--repeat 3]

Each run is a `locust --headless` subprocess, killed if it outlives duration + 30 s.
Figures come from the run's `<prefix>_stats.csv` "Aggregated" row. Exit status is
non-zero if any run failed, had request failures, or made no requests.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.provenance import line, provenance

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
REPO_ROOT = LOCUSTFILE.parents[1]
KILL_GRACE_S = 30


@dataclass(frozen=True)
class RunStats:
    requests: int
    failures: int
    rps: float
    # Percentiles in ms; None when locust reports "N/A" (no requests). Locust
    # rounds them to whole ms, so the exact mean is kept as well.
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def _number(value: str | None) -> float | None:
    if value is None or value.strip() in ("", "N/A"):
        return None
    return float(value)


def parse_stats_csv(path: str | os.PathLike[str]) -> RunStats:
    """Read the "Aggregated" row of a locust `_stats.csv` (locust 2.x column names)."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            requests = int(row["Request Count"])
            return RunStats(
                requests=requests,
                failures=int(row["Failure Count"]),
                rps=_number(row["Requests/s"]) or 0.0,
                # Locust writes 0 (not N/A) as the mean of zero requests.
                avg_ms=_number(row["Average Response Time"]) if requests else None,
                p50_ms=_number(row["50%"]),
                p95_ms=_number(row["95%"]),
                p99_ms=_number(row["99%"]),
            )
    raise ValueError(f"{path}: no 'Aggregated' row")


def median_stats(runs: Sequence[RunStats]) -> RunStats:
    """Per-field median over runs (percentiles ignore runs without data)."""
    if not runs:
        raise ValueError("no runs")

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return RunStats(
        requests=int(statistics.median(r.requests for r in runs)),
        failures=int(statistics.median(r.failures for r in runs)),
        rps=statistics.median(r.rps for r in runs),
        avg_ms=med([r.avg_ms for r in runs]),
        p50_ms=med([r.p50_ms for r in runs]),
        p95_ms=med([r.p95_ms for r in runs]),
        p99_ms=med([r.p99_ms for r in runs]),
    )


def format_stats(label: str, s: RunStats) -> str:
    def ms(v: float | None, digits: int = 0) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    return (
        f"{label}: requests={s.requests} failures={s.failures} req/s={s.rps:.1f} "
        f"avg={ms(s.avg_ms, 2)}ms p50={ms(s.p50_ms)}ms p95={ms(s.p95_ms)}ms p99={ms(s.p99_ms)}ms"
    )


def locust_command(host: str, users: int, spawn_rate: float, duration_s: int, csv_prefix: str) -> list[str]:
    # `python -m locust` from this interpreter, so the venv's locust is used even off PATH.
    return [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "-u", str(users),
        "-r", str(spawn_rate),
        "-t", f"{duration_s}s",
        "--host", host,
        "--csv", csv_prefix,
        "--only-summary",
    ]  # fmt: skip


def run_once(cmd: list[str], csv_prefix: str, timeout_s: float) -> RunStats:
    """Run locust once; raise RuntimeError if it hangs or leaves no stats."""
    stats_path = Path(f"{csv_prefix}_stats.csv")
    stats_path.unlink(missing_ok=True)  # never report a previous run's figures
    log_path = Path(f"{csv_prefix}_locust.log")
    with open(log_path, "w") as log:
        # Own session so the kill reaches locust's children too.
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            # Seen here: locust logs its shutdown and writes the final CSV, then hangs in exit (gRPC threads).
            # Its figures are complete then; anything else is a run that did not finish.
            if not (stats_path.exists() and "Shutting down (exit code" in log_path.read_text(errors="replace")):
                raise RuntimeError(f"locust did not finish within {timeout_s:.0f}s (log: {log_path})") from None
            print(f"note: locust finished its run but hung on exit; killed it, figures from {stats_path}",
                  file=sys.stderr)
    # locust exits 1 when requests failed; the CSV is still the source of truth.
    if not stats_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust exited {proc.returncode} without {stats_path}; log tail:\n{tail}")
    return parse_stats_csv(stats_path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True, help="Triton gRPC endpoint, e.g. 127.0.0.1:8001")
    p.add_argument("--users", type=int, default=4, help="concurrent users (default %(default)s)")
    p.add_argument("--duration", type=int, default=20, help="seconds per run (default %(default)s)")
    p.add_argument("--spawn-rate", type=float, help="users spawned per second (default: --users)")
    p.add_argument(
        "--csv-prefix",
        default="loadtests/results/run",
        help="locust CSV prefix; '_rN' is appended with --repeat > 1 (default %(default)s)",
    )
    p.add_argument("--repeat", type=int, default=1, help="number of runs; the median is reported (default 1)")
    p.add_argument("--json-out", help="write per-run figures and the median to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.users < 1 or args.duration < 1 or args.repeat < 1:
        parser.error("--users, --duration and --repeat must be >= 1")
    spawn_rate = args.spawn_rate if args.spawn_rate is not None else float(args.users)

    runs: list[RunStats] = []
    ok = True
    for i in range(1, args.repeat + 1):
        prefix = args.csv_prefix if args.repeat == 1 else f"{args.csv_prefix}_r{i}"
        # Relative prefixes are relative to the caller's cwd, not the subprocess's.
        prefix = str(Path(prefix).resolve())
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        cmd = locust_command(args.host, args.users, spawn_rate, args.duration, prefix)
        try:
            stats = run_once(cmd, prefix, args.duration + KILL_GRACE_S)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            print(f"run {i}/{args.repeat}: error: {exc}", file=sys.stderr)
            ok = False
            continue
        runs.append(stats)
        print(format_stats(f"run {i}/{args.repeat}", stats), flush=True)
        if stats.failures > 0 or stats.requests == 0:
            ok = False

    median = median_stats(runs) if runs else None
    if median is not None:
        print(format_stats(f"summary (median of {len(runs)} run(s))", median))

    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **provenance("loadtests.run", argv),
            "config": {
                "host": args.host,
                "users": args.users,
                "spawn_rate": spawn_rate,
                "duration_s": args.duration,
                "repeat": args.repeat,
            },
            "runs": [asdict(r) for r in runs],
            "median": asdict(median) if median is not None else None,
            "ok": ok and len(runs) == args.repeat,
        }
        out.write_text(json.dumps(payload, indent=2) + "\n")

    if not ok or len(runs) != args.repeat:
        print("FAILED: run errors, request failures or zero requests (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def render(results: Sequence[dict]) -> str:
    """BENCHMARKS.md's table of locust runs, from their --json-out files."""
    lines = [f"- {line(r)}" for r in results]
    lines += ["", "| users | run | requests | failures | req/s | mean ms | p50 ms | p95 ms | p99 ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        users = r["config"]["users"]
        rows = [(f"run {i}", run) for i, run in enumerate(r["runs"], 1)] + [("**median**", r["median"])]
        for name, run in rows:
            fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
            lines.append(f"| {users} | {name} | {run['requests']} | {run['failures']} | {run['rps']:.1f} | "
                         f"{fmt(run['avg_ms'], '.2f')} | {fmt(run['p50_ms'], '.0f')} | {fmt(run['p95_ms'], '.0f')} | "
                         f"{fmt(run['p99_ms'], '.0f')} |")
    return "\n".join(lines) + "\n"
