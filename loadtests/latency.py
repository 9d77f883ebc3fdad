"""Closed-loop latency at concurrency 1, with microsecond resolution (locust reports whole milliseconds),
for the sub-millisecond models: `score_ads` (one user against C campaigns) and `clip_embed`.

    python -m loadtests.latency --host 127.0.0.1:8001 --model score_ads --campaigns 100 --requests 2000 --repeat 3

Each run sends seeded requests back to back after a warm-up and reports p50/p90/p99 of the client-observed
gRPC latency; the median over runs of each percentile is printed last (and written with --json-out).
score_ads histories are drawn from the item ids and the event vocabulary the server publishes
(example_item_ids, behaviors; a dataset's ids need not be 1..num_items), behaviours uniformly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from clients.ads_client import AdsClient, AdsLimits, build_clip_embed_inputs, build_score_ads_inputs
from evaluation.provenance import line, provenance

WARMUP = 50


def _requests(args, limits: AdsLimits | None, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    if args.model == "score_ads":
        if limits is None or not limits.example_item_ids:
            raise SystemExit("score_ads published no example_item_ids to draw histories from")
        example_ids = np.asarray(limits.example_item_ids, dtype=np.int64)
        codes = np.arange(1, len(limits.behaviors) + 1)
    for _ in range(n):
        if args.model == "score_ads":
            length = int(rng.integers(5, 21))
            items = rng.choice(example_ids, size=length)
            ts = 1_700_000_000 + np.cumsum(rng.integers(0, 600, size=length))
            campaigns = rng.choice(limits.num_campaigns, size=args.campaigns, replace=False)
            out.append(build_score_ads_inputs(items, rng.choice(codes, size=length), ts, campaigns))
        else:
            out.append(build_clip_embed_inputs(texts=[f"a photo of a sneaker {i}" for i in range(args.rows)]))
    return out


def run_once(client: AdsClient, args, requests: list) -> dict[str, float]:
    outputs = ("pctr",) if args.model == "score_ads" else ("embedding",)
    for inputs in requests[:WARMUP]:
        client._infer(args.model, inputs, outputs)
    lat = []
    for inputs in requests[WARMUP:]:
        start = time.perf_counter()
        client._infer(args.model, inputs, outputs)
        lat.append((time.perf_counter() - start) * 1e3)
    a = np.array(lat)
    return {"requests": len(a), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True)
    p.add_argument("--model", choices=("score_ads", "clip_embed"), default="score_ads")
    p.add_argument("--campaigns", type=int, default=100, help="campaigns per score_ads request")
    p.add_argument("--rows", type=int, default=1, help="texts per clip_embed request")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out")
    p.add_argument("--label", default="", help="what sits between client and server, shown with the figures")
    args = p.parse_args(argv)
    with AdsClient(args.host, timeout_s=30) as client:
        limits = client.limits() if args.model == "score_ads" else None
        runs = []
        for r in range(args.repeat):
            stats = run_once(client, args, _requests(args, limits, args.requests + WARMUP, args.seed + r))
            runs.append(stats)
            print(f"run {r + 1}: " + "  ".join(f"{k} {v:.3f}" if k != "requests" else f"{k} {v}"
                                               for k, v in stats.items()), flush=True)
    median = {k: statistics.median(s[k] for s in runs) for k in runs[0]}
    print("median: " + "  ".join(f"{k} {v:.3f}" for k, v in median.items()))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({**provenance("loadtests.latency", argv), "args": vars(args), "runs": runs, "median": median},
                      f, indent=2)
    return 0


def render(results) -> str:
    """BENCHMARKS.md's table of concurrency-1 latency runs, from their --json-out files."""
    lines = [f"- {line(r)}" for r in results]
    lines += ["", "| model | request | run | requests | p50 ms | p90 ms | p99 ms | mean ms |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["args"]
        what = (f"1 user x {a['campaigns']} campaigns" if a["model"] == "score_ads"
                else f"{a['rows']} text{'s' if a['rows'] > 1 else ''}")
        what += f", {a['label']}" if a.get("label") else ""
        for name, run in [*((f"run {i}", run) for i, run in enumerate(r["runs"], 1)), ("**median**", r["median"])]:
            lines.append(f"| {a['model']} | {what} | {name} | {int(run['requests'])} | {run['p50_ms']:.3f} | "
                         f"{run['p90_ms']:.3f} | {run['p99_ms']:.3f} | {run['mean_ms']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
