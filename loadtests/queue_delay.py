"""The dynamic batcher's delay, chosen by measurement: perf_analyzer sweeps (loadtests.perf_sweep) of one build
served with different max_queue_delay_microseconds on the recommend steps, variants alternated round by round
so that each sees the same machine state; evaluation.report renders docs/results/queue_delay.md from the result.

    python -m loadtests.queue_delay --repository model_repository --delays 200 0 --rounds 3 \
        --out docs/results/queue_delay.json

Each variant is a copy of the repository with the delay edited in its step configs; the server (serving.launcher,
its defaults) restarts on it for every sweep. Ports 18101-18103 must be free.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving import graph

STEPS = tuple(step.name for step in graph.RECOMMEND.steps)
GRPC, HTTP, METRICS = 18101, 18102, 18103
READY_LINE = "tritonserver itself"  # the launcher prints it once the server answers


def variant_repository(base: Path, delay_us: int, where: Path) -> Path:
    """A copy of `base` whose recommend steps batch with `delay_us` (score_ads and clip_embed as built)."""
    out = where / f"delay_{delay_us}"
    shutil.copytree(base, out, symlinks=True)
    for step in STEPS:
        config = out / step / "config.pbtxt"
        text, n = re.subn(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {delay_us}",
                          config.read_text())
        if n == 0:  # a delay of 0 is not written: add it to the dynamic_batching block
            text, n = re.subn(r"dynamic_batching \{", f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}",
                              text, count=1)
        if n == 0:
            raise SystemExit(f"{config}: no dynamic_batching block to set the delay in")
        config.write_text(text)
    return out


def sweep(repository: Path, label: str, concurrency: list[int], interval_ms: int, out: Path) -> dict:
    log = out.with_suffix(".server.log")
    with open(log, "w") as sink:
        server = subprocess.Popen([sys.executable, "-m", "serving.launcher", "--model-repository", str(repository),
                                   "--grpc-port", str(GRPC), "--http-port", str(HTTP), "--metrics-port", str(METRICS)],
                                  stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(300):
            if READY_LINE in log.read_text() or server.poll() is not None:
                break
            time.sleep(1)
        if READY_LINE not in log.read_text():
            raise SystemExit(f"{label}: the server did not start (see {log})")
        pid = subprocess.run(["pgrep", "-n", "-x", "tritonserver"], capture_output=True, text=True).stdout.split()[0]
        subprocess.run([sys.executable, "-m", "loadtests.perf_sweep", "--url", f"127.0.0.1:{GRPC}", "--concurrency",
                        *map(str, concurrency), "--ads-concurrency", "1", "--interval-ms", str(interval_ms),
                        "--server-pid", pid, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.queue_delay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--delays", type=int, nargs="+", default=[200, 0], help="microseconds, one variant each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    built = {step: re.search(r"max_queue_delay_microseconds: (\d+)",
                             (args.repository / step / "config.pbtxt").read_text()) for step in STEPS}
    built = {step: int(m.group(1)) if m else 0 for step, m in built.items()}
    names = {delay: chr(ord("a") + i) for i, delay in enumerate(args.delays)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="queue-delay-") as tmp:
        where = Path(tmp)
        repositories = {delay: variant_repository(args.repository, delay, where) for delay in args.delays}
        for round_ in range(args.rounds):
            for delay in args.delays:
                result = sweep(repositories[delay], names[delay], args.concurrency, args.interval_ms,
                               where / f"sweep_{names[delay]}_{round_}.json")
                runs.append({"variant": names[delay], "result": result})
                print(f"round {round_ + 1}/{args.rounds}: delay {delay} us done", flush=True)
    data = {"what": f"perf_analyzer sweeps of one build served with different max_queue_delay_microseconds on "
                    f"{', '.join(STEPS)} (config.pbtxt edited in copies of the repository; as built: {built}), "
                    f"alternated round by round (`{' '.join(['python -m loadtests.queue_delay'] + (argv or sys.argv[1:]))}`)",
            "variants": {names[d]: f"queue delay {d} us on the recommend steps" for d in args.delays}, "runs": runs}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
