"""The dynamic batcher's settings, chosen by measurement: perf_analyzer sweeps (loadtests.perf_sweep) of one build
served with different max_queue_delay_microseconds on the recommend steps, with and without a queue policy on
every step, or with and without ragged batching, variants alternated round by round so that each sees the same
machine state; evaluation.report renders docs/results/queue_delay.md, queue_policy.md and ragged_batch.md.

    python -m loadtests.queue_delay --repository model_repository --delays 200 0 --rounds 3 \
        --out docs/results/queue_delay.json
    python -m loadtests.queue_delay --repository model_repository --queue-policy --rounds 3 \
        --out docs/results/queue_policy.json
    python -m loadtests.queue_delay --repository model_repository --ragged --rounds 3 \
        --out docs/results/ragged_batch.json

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


# The queue policy the steps had until the measurement in docs/results/queue_policy.md (serving/configs.py: _queue).
QUEUE_POLICY = ("  default_queue_policy {\n    timeout_action: REJECT\n    default_timeout_microseconds: 5000000\n"
                "    allow_timeout_override: true\n    max_queue_size: 256\n  }\n")


def policy_repository(base: Path, where: Path) -> Path:
    """A copy of `base` whose every batching step (score_ads and clip_embed too) has QUEUE_POLICY."""
    out = where / "queue_policy"
    shutil.copytree(base, out, symlinks=True)
    for config in sorted(out.glob("*/config.pbtxt")):
        text = config.read_text()
        if "dynamic_batching {" not in text:
            continue  # an ensemble
        if "default_queue_policy" in text:
            raise SystemExit(f"{config}: already has a queue policy")
        config.write_text(text.replace("dynamic_batching {\n", "dynamic_batching {\n" + QUEUE_POLICY, 1))
    return out


def unragged_repository(base: Path, where: Path) -> Path:
    """A copy of `base` whose steps batch only requests of equal input shapes (allow_ragged_batch removed)."""
    out = where / "unragged"
    shutil.copytree(base, out, symlinks=True)
    for config in sorted(out.glob("*/config.pbtxt")):
        text = config.read_text()
        config.write_text(re.sub(r"\n\s*allow_ragged_batch: true", "", text))
    return out


def sweep(repository: Path, label: str, concurrency: list[int], interval_ms: int, out: Path,
          ads_concurrency: tuple[int, ...] = (1,)) -> dict:
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
                        *map(str, concurrency), "--ads-concurrency", *map(str, ads_concurrency),
                        "--interval-ms", str(interval_ms),
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
    parser.add_argument("--queue-policy", action="store_true",
                        help="compare the build as it is with a copy whose every step has a queue policy "
                             "(instead of --delays)")
    parser.add_argument("--ragged", action="store_true",
                        help="compare the build as it is with a copy without ragged batching (instead of --delays)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    command = " ".join(["python -m loadtests.queue_delay"] + (argv or sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="queue-delay-") as tmp:
        where = Path(tmp)
        if args.ragged:
            repositories = {"a": args.repository, "b": unragged_repository(args.repository, where)}
            variants = {"a": "as built: ragged batching (requests of any history length batch together)",
                        "b": "allow_ragged_batch removed: only requests of equal input shapes batch together"}
            what = (f"perf_analyzer sweeps of one build served as built and without ragged batching "
                    f"(config.pbtxt edited in a copy), alternated round by round (`{command}`)")
            ads = (1, 4)
        elif args.queue_policy:
            repositories = {"a": args.repository, "b": policy_repository(args.repository, where)}
            variants = {"a": "as built: no queue policy (payload prefetching on)",
                        "b": "every step with the queue policy the build had before (REJECT after 5 s, at most 256 "
                             "queued; prefetching off)"}
            what = (f"perf_analyzer sweeps of one build served as built and with a queue policy added to every "
                    f"step (config.pbtxt edited in a copy), alternated round by round (`{command}`)")
            ads = (1, 4)
        else:
            built = {step: re.search(r"max_queue_delay_microseconds: (\d+)",
                                     (args.repository / step / "config.pbtxt").read_text()) for step in STEPS}
            built = {step: int(m.group(1)) if m else 0 for step, m in built.items()}
            names = {delay: chr(ord("a") + i) for i, delay in enumerate(args.delays)}
            repositories = {names[d]: variant_repository(args.repository, d, where) for d in args.delays}
            variants = {names[d]: f"queue delay {d} us on the recommend steps" for d in args.delays}
            what = (f"perf_analyzer sweeps of one build served with different max_queue_delay_microseconds on "
                    f"{', '.join(STEPS)} (config.pbtxt edited in copies of the repository; as built: {built}), "
                    f"alternated round by round (`{command}`)")
            ads = (1,)
        runs = []
        for round_ in range(args.rounds):
            for name, repository in repositories.items():
                result = sweep(repository, name, args.concurrency, args.interval_ms,
                               where / f"sweep_{name}_{round_}.json", ads)
                runs.append({"variant": name, "result": result})
                print(f"round {round_ + 1}/{args.rounds}: {variants[name]} done", flush=True)
    data = {"what": what, "variants": variants, "runs": runs}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
