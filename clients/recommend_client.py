"""Typed gRPC client for the Triton `recommend` ensemble (KServe v2 protocol).

The client deliberately does *not* check business limits (history length, id
ranges, k range, ...): the server is the authority and answers bad input with
INVALID_ARGUMENT, and tests must be able to send bad input through it. The
client only guarantees the wire format: tensor names, dtypes and [1, n] shapes.

Depends only on numpy and tritonclient so it can ship without the server code.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

__all__ = [
    "CLIENT_ERROR_CODE",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_URL",
    "INPUT_BEHAVIORS",
    "INPUT_CATEGORY_IDS",
    "INPUT_EXCLUDE_ITEM_IDS",
    "INPUT_ITEM_IDS",
    "INPUT_K",
    "INPUT_TIMESTAMPS",
    "OUTPUT_NAMES",
    "OUTPUT_PCTR",
    "OUTPUT_RETRIEVAL_SOURCE",
    "OUTPUT_TOP_ITEM_IDS",
    "Behavior",
    "Event",
    "Recommendation",
    "RecommendClient",
    "RecommendError",
    "RecommendedItem",
    "ServerLimits",
    "build_inputs",
    "build_inputs_from_arrays",
    "parse_limits",
    "parse_outputs",
    "synthetic_history",
]

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_MODEL_NAME = "recommend"

# Wire names of the `recommend` ensemble (fixed protocol).
INPUT_ITEM_IDS = "item_ids"
INPUT_BEHAVIORS = "behaviors"
INPUT_TIMESTAMPS = "timestamps"
INPUT_K = "k"
INPUT_EXCLUDE_ITEM_IDS = "exclude_item_ids"
INPUT_CATEGORY_IDS = "category_ids"
OUTPUT_TOP_ITEM_IDS = "top_item_ids"
OUTPUT_PCTR = "pctr"
OUTPUT_RETRIEVAL_SOURCE = "retrieval_source"
OUTPUT_NAMES: tuple[str, ...] = (OUTPUT_TOP_ITEM_IDS, OUTPUT_PCTR, OUTPUT_RETRIEVAL_SOURCE)

# Code used for failures that did not come with a gRPC status (malformed
# response, missing config parameters, client-side tritonclient errors).
CLIENT_ERROR_CODE = "CLIENT_ERROR"

_LIMIT_PARAMS: tuple[str, ...] = ("num_items", "max_history", "max_k", "num_categories")


class Behavior(enum.IntEnum):
    VIEW = 1
    ADD_TO_CART = 2
    REMOVE_FROM_CART = 3
    PURCHASE = 4


@dataclass(frozen=True, slots=True)
class Event:
    item_id: int
    behavior: Behavior
    timestamp: int  # unix seconds


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    item_id: int
    pctr: float
    source: str


@dataclass(frozen=True, slots=True)
class Recommendation:
    items: tuple[RecommendedItem, ...]
    model_version: str | None


@dataclass(frozen=True, slots=True)
class ServerLimits:
    num_items: int
    max_history: int
    max_k: int
    num_categories: int


class RecommendError(Exception):
    """A failed call; `code` is the gRPC status string, e.g. "StatusCode.INVALID_ARGUMENT"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_triton(cls, exc: InferenceServerException) -> RecommendError:
        # status() is None for errors raised inside tritonclient itself.
        return cls(exc.status() or CLIENT_ERROR_CODE, exc.message() or str(exc))


# --------------------------------------------------------------------------
# Pure helpers (no network): tensor building and response parsing.
# --------------------------------------------------------------------------


def _row(name: str, values: Iterable[int], dtype: type[np.integer]) -> np.ndarray:
    """[1, n] array (batch of one, also for n == 0) with the exact wire dtype.

    Only representability is checked: numpy 1.26 would silently wrap e.g.
    2**32 + 5 to 5 in INT32, turning a bad request into a different valid one.
    """
    ints = [int(v) for v in values]
    info = np.iinfo(dtype)
    if ints and (min(ints) < info.min or max(ints) > info.max):
        bad = next(v for v in ints if not info.min <= v <= info.max)
        raise RecommendError(CLIENT_ERROR_CODE, f"{name}: value {bad} does not fit {np.dtype(dtype).name}")
    return np.asarray(ints, dtype=dtype).reshape(1, -1)


def _infer_input(name: str, data: np.ndarray, datatype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return inp


def build_inputs_from_arrays(
    item_ids: Iterable[int],
    behaviors: Iterable[int],
    timestamps: Iterable[int],
    k: int,
    exclude_item_ids: Iterable[int] | None = None,
    category_ids: Iterable[int] | None = None,
) -> list[grpcclient.InferInput]:
    """Raw tensor builder; no consistency checks at all (lengths may differ),
    so server tests can send deliberately malformed requests.

    `None` omits an optional input; an empty iterable sends a [1, 0] tensor
    and leaves its meaning to the server. Raises RecommendError (CLIENT_ERROR)
    only if a value cannot be represented in its wire dtype.
    """

    def tensor(
        name: str, values: Iterable[int], dtype: type[np.integer], datatype: str
    ) -> grpcclient.InferInput:
        return _infer_input(name, _row(name, values, dtype), datatype)

    inputs = [
        tensor(INPUT_ITEM_IDS, item_ids, np.int64, "INT64"),
        tensor(INPUT_BEHAVIORS, behaviors, np.int32, "INT32"),
        tensor(INPUT_TIMESTAMPS, timestamps, np.int64, "INT64"),
        tensor(INPUT_K, [k], np.int32, "INT32"),
    ]
    if exclude_item_ids is not None:
        inputs.append(tensor(INPUT_EXCLUDE_ITEM_IDS, exclude_item_ids, np.int64, "INT64"))
    if category_ids is not None:
        inputs.append(tensor(INPUT_CATEGORY_IDS, category_ids, np.int32, "INT32"))
    return inputs


def build_inputs(
    events: Sequence[Event],
    k: int,
    exclude_item_ids: Iterable[int] | None = None,
    category_ids: Iterable[int] | None = None,
) -> list[grpcclient.InferInput]:
    """InferInput list for one request; events are sent in the given order (oldest first)."""
    return build_inputs_from_arrays(
        (e.item_id for e in events),
        (int(e.behavior) for e in events),
        (e.timestamp for e in events),
        k,
        exclude_item_ids,
        category_ids,
    )


def _decode(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def parse_outputs(
    top_item_ids: np.ndarray | None,
    pctr: np.ndarray | None,
    retrieval_source: np.ndarray | None,
    model_version: str | None = None,
) -> Recommendation:
    """Turn the three output tensors ([1, k] each) into a Recommendation."""
    arrays = {
        OUTPUT_TOP_ITEM_IDS: top_item_ids,
        OUTPUT_PCTR: pctr,
        OUTPUT_RETRIEVAL_SOURCE: retrieval_source,
    }
    missing = [name for name, arr in arrays.items() if arr is None]
    if missing:
        raise RecommendError(CLIENT_ERROR_CODE, f"response lacks output(s): {', '.join(missing)}")
    # Flatten the batch dimension; a batch of one is all this client sends.
    ids, probs, sources = (np.asarray(a).reshape(-1) for a in (top_item_ids, pctr, retrieval_source))
    if not (ids.size == probs.size == sources.size):
        raise RecommendError(
            CLIENT_ERROR_CODE,
            f"output sizes differ: {OUTPUT_TOP_ITEM_IDS}={ids.size}, "
            f"{OUTPUT_PCTR}={probs.size}, {OUTPUT_RETRIEVAL_SOURCE}={sources.size}",
        )
    items = tuple(
        RecommendedItem(item_id=int(i), pctr=float(p), source=_decode(s))
        for i, p, s in zip(ids.tolist(), probs.tolist(), sources.tolist())
    )
    return Recommendation(items=items, model_version=model_version or None)


def parse_limits(parameters: Mapping[str, Any]) -> ServerLimits:
    """Parse the `parameters` map of the model config (JSON form: {name: {"string_value": "..."}})."""
    values: dict[str, int] = {}
    for name in _LIMIT_PARAMS:
        entry = parameters.get(name)
        raw = entry.get("string_value") if isinstance(entry, Mapping) else entry
        try:
            values[name] = int(str(raw).strip())
        except (TypeError, ValueError):
            raise RecommendError(
                CLIENT_ERROR_CODE, f"model config parameter {name!r} missing or not an integer: {raw!r}"
            ) from None
    return ServerLimits(**values)


def synthetic_history(
    num_items: int,
    length: int,
    rng: random.Random,
    start_ts: int = 1_700_000_000,
) -> list[Event]:
    """Plausible random history with valid ids 1..num_items, for the CLI and load tests.

    Mostly views with some cart/purchase events; timestamps non-decreasing.
    """
    behaviors = list(Behavior)
    weights = (0.75, 0.12, 0.05, 0.08)  # views dominate real traffic
    events: list[Event] = []
    ts = start_ts
    for _ in range(length):
        ts += rng.randint(0, 300)
        events.append(
            Event(
                item_id=rng.randint(1, num_items),
                behavior=rng.choices(behaviors, weights)[0],
                timestamp=ts,
            )
        )
    return events


# --------------------------------------------------------------------------
# Network client.
# --------------------------------------------------------------------------


class RecommendClient:
    """Blocking client for the `recommend` model. Use as a context manager to close the channel."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model_name: str = DEFAULT_MODEL_NAME,
        timeout_s: float | None = None,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.timeout_s = timeout_s
        # The channel is created lazily by gRPC, so this does not connect yet.
        self._client = grpcclient.InferenceServerClient(url=url)
        self._outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        self._limits: ServerLimits | None = None
        self._closed = False

    def __enter__(self) -> RecommendClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    # Exposed as a method too so callers holding a client need no extra import.
    build_inputs = staticmethod(build_inputs)

    def recommend(
        self,
        events: Sequence[Event],
        k: int,
        exclude_item_ids: Iterable[int] | None = None,
        category_ids: Iterable[int] | None = None,
    ) -> Recommendation:
        return self.infer(build_inputs(events, k, exclude_item_ids, category_ids))

    def infer(self, inputs: list[grpcclient.InferInput]) -> Recommendation:
        """Send prebuilt inputs (see build_inputs / build_inputs_from_arrays)."""
        try:
            result = self._client.infer(
                self.model_name,
                inputs,
                outputs=self._outputs,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise RecommendError.from_triton(exc) from exc
        version = result.get_response().model_version
        return parse_outputs(
            result.as_numpy(OUTPUT_TOP_ITEM_IDS),
            result.as_numpy(OUTPUT_PCTR),
            result.as_numpy(OUTPUT_RETRIEVAL_SOURCE),
            version,
        )

    def limits(self) -> ServerLimits:
        """Server limits from the model config parameters; fetched once, then cached."""
        if self._limits is None:
            try:
                config = self._client.get_model_config(
                    self.model_name, as_json=True, client_timeout=self.timeout_s
                )
            except InferenceServerException as exc:
                raise RecommendError.from_triton(exc) from exc
            self._limits = parse_limits(config.get("config", {}).get("parameters", {}))
        return self._limits

    def is_ready(self) -> bool:
        """True if the model is loaded and ready; False on any error (server down, unknown model)."""
        try:
            return bool(self._client.is_model_ready(self.model_name, client_timeout=self.timeout_s))
        except InferenceServerException:
            return False
