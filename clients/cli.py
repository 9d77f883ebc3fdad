"""Send one sample request to the `recommend` model and print the result.

    python -m clients.cli [--url 127.0.0.1:8001] [--k 10] [--items 3,17,42]
                          [--behaviors 1,1,2] [--exclude ...] [--categories ...] [--json]

Without --items a deterministic synthetic history with ids from the server's
limits is sent. Values are passed through unchecked (the server validates), so
the CLI can also be used to poke at the server's error handling.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence

from clients.recommend_client import (
    DEFAULT_MODEL_NAME,
    DEFAULT_URL,
    Recommendation,
    RecommendClient,
    RecommendError,
    build_inputs_from_arrays,
    synthetic_history,
)

DEFAULT_HISTORY_LEN = 8
DEFAULT_SEED = 0
# Fixed base so repeated CLI calls send byte-identical requests.
BASE_TIMESTAMP = 1_700_000_000


def _int_list(text: str) -> list[int]:
    """Parse "3,17,42" (spaces allowed; "" gives an empty list)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help=f"Triton gRPC endpoint (default {DEFAULT_URL})")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="model name (default %(default)s)")
    p.add_argument("--k", type=int, default=10, help="number of items wanted (default %(default)s)")
    p.add_argument("--items", type=_int_list, help="history item ids, oldest first, e.g. 3,17,42")
    p.add_argument(
        "--behaviors",
        type=_int_list,
        help="behavior per item (1=view 2=add_to_cart 3=remove_from_cart 4=purchase); default all views",
    )
    p.add_argument("--exclude", type=_int_list, help="item ids never to return")
    p.add_argument("--categories", type=_int_list, help="restrict to these top-level category ids")
    p.add_argument("--timeout", type=float, default=10.0, help="per-call timeout in seconds (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _format_table(rec: Recommendation, latency_ms: float) -> str:
    lines = [f"{'rank':>4}  {'item_id':>10}  {'pctr':>8}  source", f"{'-' * 4}  {'-' * 10}  {'-' * 8}  {'-' * 13}"]
    for rank, item in enumerate(rec.items, start=1):
        lines.append(f"{rank:>4}  {item.item_id:>10}  {item.pctr:>8.5f}  {item.source}")
    if not rec.items:
        lines.append("(no items)")
    lines.append(f"latency: {latency_ms:.2f} ms  model_version: {rec.model_version or '-'}")
    return "\n".join(lines)


def _to_json(rec: Recommendation, latency_ms: float) -> str:
    return json.dumps(
        {
            "items": [
                {"rank": r, "item_id": it.item_id, "pctr": round(it.pctr, 6), "source": it.source}
                for r, it in enumerate(rec.items, start=1)
            ],
            "model_version": rec.model_version,
            "latency_ms": round(latency_ms, 3),
        },
        indent=2,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.items is None and args.behaviors is not None:
        parser.error("--behaviors needs --items")

    try:
        with RecommendClient(args.url, args.model, timeout_s=args.timeout) as client:
            if args.items is None:
                num_items = client.limits().num_items
                events = synthetic_history(
                    num_items, DEFAULT_HISTORY_LEN, random.Random(DEFAULT_SEED), BASE_TIMESTAMP
                )
                item_ids = [e.item_id for e in events]
                behaviors = [int(e.behavior) for e in events]
                timestamps = [e.timestamp for e in events]
            else:
                item_ids = args.items
                behaviors = args.behaviors if args.behaviors is not None else [1] * len(item_ids)
                # One event per minute; length follows --items (mismatches are the server's to reject).
                timestamps = [BASE_TIMESTAMP + 60 * i for i in range(len(item_ids))]

            inputs = build_inputs_from_arrays(
                item_ids, behaviors, timestamps, args.k, args.exclude, args.categories
            )
            start = time.perf_counter()
            rec = client.infer(inputs)
            latency_ms = (time.perf_counter() - start) * 1000.0
    except RecommendError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2

    print(_to_json(rec, latency_ms) if args.json else _format_table(rec, latency_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
