"""Send one sample request to the `recommend` model and print the result.

    python -m clients.cli [--url 127.0.0.1:8001] [--k 10] [--items 1000017,1000342]
                          [--behaviors view,add_to_cart] [--exclude ...] [--categories shoes,3]
                          [--category "Clothing, Shoes & Jewelry"] [--json] [--info]

The CLI first reads what the server publishes: its limits, its event vocabulary and its top-level category
names (shown above the result; `--info` shows only these; a model that publishes none, e.g. an internal
step, can still be sent numeric codes and indices). Item ids are the dataset's own. Without --items a
deterministic synthetic history drawn from the server's example item ids is sent. Behaviours are event names
of the server's vocabulary or their codes (1 + index); categories are top-level category names or their
indices (a name wins over an index when a category's name is itself a number). Other values are passed
through unchecked (the server validates), so the CLI can also be used to poke at the server's error handling.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from clients.recommend_client import (
    CLIENT_ERROR_CODE,
    DEFAULT_MODEL_NAME,
    DEFAULT_URL,
    Recommendation,
    RecommendClient,
    RecommendError,
    ServerLimits,
    build_inputs_from_arrays,
    resolve_behaviors,
    resolve_categories,
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


def _token_list(text: str) -> list[str]:
    """Parse "view, 2,add_to_cart" into its stripped tokens (names or numbers; "" gives an empty list)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _name_or_index(token: str, names: Sequence[str]) -> int | str:
    """A token as the name it matches exactly, else as an integer, else as an (unknown) name to be refused."""
    if token in names:
        return token
    try:
        return int(token)
    except ValueError:
        return token


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help=f"Triton gRPC endpoint (default {DEFAULT_URL})")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="model name (default %(default)s)")
    p.add_argument("--k", type=int, default=10, help="number of items wanted (default %(default)s)")
    p.add_argument("--items", type=_int_list, help="history item ids (the dataset's own), oldest first")
    p.add_argument(
        "--behaviors",
        type=_token_list,
        help="behaviour per item: event names of the server's vocabulary or codes (1 + index; see --info); "
        "default: the vocabulary's first event for every item",
    )
    p.add_argument("--exclude", type=_int_list, help="item ids never to return")
    p.add_argument(
        "--categories",
        type=_token_list,
        help="comma-separated top-level category names or indices (see --info) to restrict to",
    )
    p.add_argument(
        "--category",
        action="append",
        default=[],
        help="one top-level category name or index (repeatable; for names that contain commas)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per-call timeout in seconds (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--info", action="store_true", help="only show what the server publishes, send nothing")
    return p


def _listing(names: Sequence[str], first: int) -> str:
    return " ".join(f"{i}={name}" for i, name in enumerate(names, start=first)) or "(none)"


def _limits_dict(limits: ServerLimits) -> dict[str, Any]:
    return {
        "num_items": limits.num_items,
        "max_history": limits.max_history,
        "max_k": limits.max_k,
        "num_categories": limits.num_categories,
        "max_exclude": limits.max_exclude,
        "behaviors": {str(i): name for i, name in enumerate(limits.behaviors, start=1)},
        "categories": {str(i): name for i, name in enumerate(limits.categories)},
        "example_item_ids": list(limits.example_item_ids),
    }


def _format_limits(limits: ServerLimits) -> str:
    return "\n".join([
        f"server: num_items={limits.num_items} max_history={limits.max_history} max_k={limits.max_k} "
        f"num_categories={limits.num_categories} max_exclude={limits.max_exclude}",
        f"behaviors: {_listing(limits.behaviors, 1)}",
        f"categories: {_listing(limits.categories, 0)}",
        f"example item ids: {' '.join(map(str, limits.example_item_ids)) or '(none)'}",
    ])


def _behavior_name(code: int, limits: ServerLimits | None) -> str:
    """The event name of a code, or the code as text when the server's vocabulary lacks it (or is unknown)."""
    return limits.behaviors[code - 1] if limits and 1 <= code <= len(limits.behaviors) else str(code)


def _format_history(item_ids: Sequence[int], behaviors: Sequence[int], limits: ServerLimits | None) -> str:
    events = [f"{i}:{_behavior_name(b, limits)}" for i, b in zip(item_ids, behaviors)]
    return f"history ({len(item_ids)} events, item:behaviour): {' '.join(events) or '(empty)'}"


def _format_table(rec: Recommendation, latency_ms: float) -> str:
    lines = [f"{'rank':>4}  {'item_id':>10}  {'pctr':>8}  source", f"{'-' * 4}  {'-' * 10}  {'-' * 8}  {'-' * 13}"]
    for rank, item in enumerate(rec.items, start=1):
        lines.append(f"{rank:>4}  {item.item_id:>10}  {item.pctr:>8.5f}  {item.source}")
    if not rec.items:
        lines.append("(no items)")
    lines.append(f"latency: {latency_ms:.2f} ms  model_version: {rec.model_version or '-'}")
    return "\n".join(lines)


def _to_json(rec: Recommendation, latency_ms: float, request: dict[str, Any] | None = None,
             limits: ServerLimits | None = None) -> str:
    out: dict[str, Any] = {
        "items": [
            {"rank": r, "item_id": it.item_id, "pctr": round(it.pctr, 6), "source": it.source}
            for r, it in enumerate(rec.items, start=1)
        ],
        "model_version": rec.model_version,
        "latency_ms": round(latency_ms, 3),
    }
    if request is not None:
        out["request"] = request
    if limits is not None:
        out["server"] = _limits_dict(limits)
    return json.dumps(out, indent=2)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.items is None and args.behaviors is not None:
        parser.error("--behaviors needs --items")
    category_tokens = None
    if args.categories is not None or args.category:
        category_tokens = (args.categories or []) + args.category
    # Only numeric codes/indices and explicit items can go out without the server's published names.
    needs_limits = args.info or args.items is None or not all(
        _is_int(t) for t in (args.behaviors or []) + (category_tokens or []))

    limits: ServerLimits | None = None
    try:
        with RecommendClient(args.url, args.model, timeout_s=args.timeout) as client:
            try:
                limits = client.limits()
            except RecommendError as exc:
                if exc.code != CLIENT_ERROR_CODE or needs_limits:
                    raise
                # E.g. an internal step, which publishes no parameters: the given codes go out as they are.
                print(f"warning: {exc.message}; sending the given codes and indices unresolved", file=sys.stderr)
            if args.info:
                assert limits is not None
                print(json.dumps(_limits_dict(limits), indent=2) if args.json else _format_limits(limits))
                return 0
            if args.items is None:
                assert limits is not None
                events = synthetic_history(limits, min(DEFAULT_HISTORY_LEN, limits.max_history),
                                           random.Random(DEFAULT_SEED), BASE_TIMESTAMP)
                item_ids = [e.item_id for e in events]
                behaviors = [int(e.behavior) for e in events]
                timestamps = [e.timestamp for e in events]
            else:
                item_ids = args.items
                if args.behaviors is None:
                    behaviors = [1] * len(item_ids)  # code 1: the vocabulary's first event
                else:
                    vocabulary = limits.behaviors if limits else ()
                    behaviors = resolve_behaviors((_name_or_index(t, vocabulary) for t in args.behaviors),
                                                  limits.behaviors if limits else None)
                # One event per minute; length follows --items (mismatches are the server's to reject).
                timestamps = [BASE_TIMESTAMP + 60 * i for i in range(len(item_ids))]
            categories = None
            if category_tokens is not None:
                names = limits.categories if limits else ()
                categories = resolve_categories((_name_or_index(t, names) for t in category_tokens),
                                                limits.categories if limits else None)

            inputs = build_inputs_from_arrays(item_ids, behaviors, timestamps, args.k, args.exclude, categories)
            start = time.perf_counter()
            rec = client.infer(inputs)
            latency_ms = (time.perf_counter() - start) * 1000.0
    except RecommendError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2

    if args.json:
        request = {
            "item_ids": item_ids,
            "behaviors": [_behavior_name(b, limits) for b in behaviors],
            "timestamps": timestamps,
            "k": args.k,
            "exclude_item_ids": args.exclude,
            "category_ids": categories,
        }
        print(_to_json(rec, latency_ms, request, limits))
    else:
        if limits is not None:
            print(_format_limits(limits))
        print(_format_history(item_ids, behaviors, limits))
        print(_format_table(rec, latency_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
