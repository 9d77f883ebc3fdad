"""Typed gRPC client for the Triton `recommend` ensemble (KServe v2 protocol).

The client deliberately does *not* check business limits (history length, id
ranges, k range, ...): the server is the authority and answers bad input with
INVALID_ARGUMENT, and tests must be able to send bad input through it. The
client only guarantees the wire format: tensor names, dtypes and [1, n] shapes.

The server serves a shop's own dataset, so nothing here assumes ids 1..num_items
or the default event vocabulary: the server publishes its vocabulary
("behaviors"), its top-level category names ("categories") and a few valid item
ids ("example_item_ids") as model config parameters; `ServerLimits` carries
them, event names and category names are resolved with them, and
`synthetic_history` draws from them. Integer codes and indices are sent as given.

Depends only on numpy and tritonclient so it can ship without the server code.
"""

from __future__ import annotations

import enum
import json
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
    "DEFAULT_BEHAVIORS",
    "Behavior",
    "Event",
    "Recommendation",
    "RecommendClient",
    "RecommendError",
    "RecommendedItem",
    "ServerLimits",
    "build_inputs",
    "build_inputs_from_arrays",
    "needs_vocabulary",
    "param_int",
    "param_item_ids",
    "param_names",
    "parse_limits",
    "parse_outputs",
    "resolve_behaviors",
    "resolve_categories",
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

_INT_PARAMS: tuple[str, ...] = ("num_items", "max_history", "max_k", "num_categories", "max_exclude")

# The default event vocabulary (a dataset without its own): behaviour code = 1 + index, 0 is padding.
DEFAULT_BEHAVIORS: tuple[str, ...] = ("view", "add_to_cart", "remove_from_cart", "purchase")


class Behavior(enum.IntEnum):
    """Codes of the *default* vocabulary only. Resolved against a server's vocabulary (RecommendClient.recommend,
    build_inputs(limits=...)) a member is looked up by name (ADD_TO_CART -> "add_to_cart"), so it is sent with
    that server's code for the event or refused when the server's vocabulary lacks it; without a vocabulary
    (build_inputs without limits) it is sent as its value."""

    VIEW = 1
    ADD_TO_CART = 2
    REMOVE_FROM_CART = 3
    PURCHASE = 4


@dataclass(frozen=True, slots=True)
class Event:
    item_id: int  # the dataset's own id (any int64)
    behavior: int | str  # a code (1 + index in the server's vocabulary, sent as given) or an event name
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
    """What the `recommend` model publishes (its config parameters)."""

    num_items: int
    max_history: int
    max_k: int
    num_categories: int
    max_exclude: int
    behaviors: tuple[str, ...]  # event vocabulary: code i + 1 is behaviors[i]
    categories: tuple[str, ...]  # top-level category names: category filter index i is categories[i]
    example_item_ids: tuple[int, ...]  # a few valid item ids (the most interacted), for synthetic traffic

    def behavior_codes(self, behaviors: Iterable[int | str]) -> list[int]:
        return resolve_behaviors(behaviors, self.behaviors)

    def category_indices(self, categories: Iterable[int | str]) -> list[int]:
        return resolve_categories(categories, self.categories)


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


def _listing(names: Sequence[str], first: int) -> str:
    return ", ".join(f"{i}={name}" for i, name in enumerate(names, start=first)) or "(none published)"


def resolve_behaviors(behaviors: Iterable[int | str], vocabulary: Sequence[str] | None) -> list[int]:
    """Behaviour codes for the wire. An event name is looked up in `vocabulary` (code = 1 + index); a Behavior
    member by its name, lower-cased; any other int is a code and sent as given (range checks are the server's).
    `vocabulary=None` (not known): names are refused and Behavior members sent as their default codes.
    Raises RecommendError (CLIENT_ERROR) for a name outside the vocabulary, listing it."""
    codes: list[int] = []
    for b in behaviors:
        if isinstance(b, Behavior) and vocabulary is None:
            codes.append(int(b))
            continue
        if isinstance(b, (str, Behavior)):
            name = b.name.lower() if isinstance(b, Behavior) else b
            if vocabulary is None:
                raise RecommendError(CLIENT_ERROR_CODE, f"behaviors: event name {name!r} needs the server's "
                                     "vocabulary (pass limits=, or use RecommendClient.recommend)")
            try:
                codes.append(list(vocabulary).index(name) + 1)
            except ValueError:
                what = f"Behavior.{b.name} (default vocabulary)" if isinstance(b, Behavior) else repr(name)
                raise RecommendError(CLIENT_ERROR_CODE, f"behaviors: {what} is not in the server's event "
                                     f"vocabulary: {_listing(vocabulary, 1)}") from None
        else:
            codes.append(int(b))
    return codes


def resolve_categories(categories: Iterable[int | str], names: Sequence[str] | None) -> list[int]:
    """Category filter indices for the wire: a name is looked up in `names` (the server's sorted top-level
    category names; index = position), an int is an index and sent as given. Raises RecommendError
    (CLIENT_ERROR) for an unknown name, listing the categories."""
    indices: list[int] = []
    for c in categories:
        if isinstance(c, str):
            if names is None:
                raise RecommendError(CLIENT_ERROR_CODE, f"category_ids: category name {c!r} needs the server's "
                                     "category names (pass limits=, or use RecommendClient.recommend)")
            try:
                indices.append(list(names).index(c))
            except ValueError:
                raise RecommendError(CLIENT_ERROR_CODE, f"category_ids: {c!r} is not one of the server's "
                                     f"top-level categories: {_listing(names, 0)}") from None
        else:
            indices.append(int(c))
    return indices


def needs_vocabulary(behaviors: Iterable[int | str] = (), categories: Iterable[int | str] | None = None) -> bool:
    """True if resolving these takes the server's published names (an event or category name, a Behavior)."""
    return any(isinstance(b, (str, Behavior)) for b in behaviors) or any(
        isinstance(c, str) for c in categories or ())


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
    category_ids: Iterable[int | str] | None = None,
    *,
    limits: ServerLimits | None = None,
) -> list[grpcclient.InferInput]:
    """InferInput list for one request; events are sent in the given order (oldest first).

    Event names, Behavior members and category names are resolved with `limits` (the server's published
    vocabulary and categories, see resolve_behaviors / resolve_categories); int codes and indices are sent as
    given. Without `limits`, names are refused (RecommendError, CLIENT_ERROR).
    """
    return build_inputs_from_arrays(
        (e.item_id for e in events),
        resolve_behaviors((e.behavior for e in events), limits.behaviors if limits else None),
        (e.timestamp for e in events),
        k,
        exclude_item_ids,
        None if category_ids is None else resolve_categories(category_ids, limits.categories if limits else None),
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


def _param_text(parameters: Mapping[str, Any], name: str) -> str:
    """The string value of one config parameter (JSON form {"string_value": "..."} or a plain string)."""
    entry = parameters.get(name)
    raw = entry.get("string_value") if isinstance(entry, Mapping) else entry
    if not isinstance(raw, str):
        found = ", ".join(sorted(parameters)) or "none"
        raise RecommendError(CLIENT_ERROR_CODE, f"model config parameter {name!r} is missing (parameters found: "
                             f"{found}); the server may predate it")
    return raw


def _malformed(name: str, expected: str, raw: str) -> RecommendError:
    shown = raw if len(raw) <= 200 else raw[:200] + "..."
    return RecommendError(CLIENT_ERROR_CODE, f"model config parameter {name!r} is malformed: expected {expected}, "
                          f"got {shown!r}")


def param_int(parameters: Mapping[str, Any], name: str) -> int:
    """An int parameter (published as its digits)."""
    raw = _param_text(parameters, name)
    try:
        return int(raw.strip())
    except ValueError:
        raise _malformed(name, "an integer", raw) from None


def param_names(parameters: Mapping[str, Any], name: str, allow_empty: bool = False) -> tuple[str, ...]:
    """A JSON list of distinct non-empty names (the event vocabulary, the category names)."""
    raw = _param_text(parameters, name)
    expected = f"a JSON list of distinct non-empty names{'' if allow_empty else ' (at least one)'}"
    try:
        value = json.loads(raw)
    except ValueError:
        raise _malformed(name, expected, raw) from None
    if (not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value)
            or len(set(value)) != len(value) or not (value or allow_empty)):
        raise _malformed(name, expected, raw)
    return tuple(value)


def param_item_ids(parameters: Mapping[str, Any], name: str) -> tuple[int, ...]:
    """A JSON list of int64 item ids."""
    raw = _param_text(parameters, name)
    expected = "a JSON list of int64 item ids"
    try:
        value = json.loads(raw)
    except ValueError:
        raise _malformed(name, expected, raw) from None
    info = np.iinfo(np.int64)
    if not isinstance(value, list) or not all(
            type(v) is int and info.min <= v <= info.max for v in value):  # type(): no bools, no floats
        raise _malformed(name, expected, raw)
    return tuple(value)


def parse_limits(parameters: Mapping[str, Any]) -> ServerLimits:
    """Parse the `parameters` map of the `recommend` model config (JSON form: {name: {"string_value": "..."}}).

    Raises RecommendError (CLIENT_ERROR) naming the parameter when one is missing or malformed.
    """
    ints = {name: param_int(parameters, name) for name in _INT_PARAMS}
    return ServerLimits(
        **ints,
        behaviors=param_names(parameters, "behaviors"),
        categories=param_names(parameters, "categories", allow_empty=True),
        example_item_ids=param_item_ids(parameters, "example_item_ids"),
    )


# Relative frequencies of the default events in real traffic (views dominate); used only when every name of
# the server's vocabulary is one of these, else events are drawn uniformly from the vocabulary.
_DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"view": 0.75, "add_to_cart": 0.12, "remove_from_cart": 0.05,
                                            "purchase": 0.08}


def synthetic_history(
    limits: Any,
    length: int,
    rng: random.Random,
    start_ts: int = 1_700_000_000,
) -> list[Event]:
    """Plausible random history for the CLI and load tests, valid on the server that published `limits`.

    `limits` is anything with `example_item_ids` and `behaviors` (ServerLimits, ads_client.AdsLimits): item
    ids are drawn from the published example ids (a dataset's ids need not be 1..num_items), behaviours are
    codes of the published vocabulary (mostly views when it is the default one, else uniform); timestamps are
    non-decreasing. Raises RecommendError (CLIENT_ERROR) if the server published no example ids.
    """
    if not hasattr(limits, "example_item_ids") or not hasattr(limits, "behaviors"):
        raise TypeError("synthetic_history needs the server's limits (example_item_ids, behaviors), e.g. "
                        f"RecommendClient.limits(); got {limits!r}")
    item_ids = list(limits.example_item_ids)
    vocabulary = list(limits.behaviors)
    if not item_ids or not vocabulary:
        what = "example_item_ids" if not item_ids else "behaviors"
        raise RecommendError(CLIENT_ERROR_CODE, f"synthetic_history: the server published no {what}")
    codes = list(range(1, len(vocabulary) + 1))
    weights = ([_DEFAULT_EVENT_WEIGHTS[n] for n in vocabulary] if all(n in _DEFAULT_EVENT_WEIGHTS for n in vocabulary)
               else [1.0] * len(vocabulary))
    events: list[Event] = []
    ts = start_ts
    for _ in range(length):
        ts += rng.randint(0, 300)
        events.append(Event(item_id=rng.choice(item_ids), behavior=rng.choices(codes, weights)[0], timestamp=ts))
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
        category_ids: Iterable[int | str] | None = None,
    ) -> Recommendation:
        """Top-k for one history. Event names / Behavior members and category names are resolved with the
        server's published vocabulary and categories (limits(), fetched once when first needed); int codes
        and indices are sent as given."""
        categories = None if category_ids is None else list(category_ids)
        limits = self.limits() if needs_vocabulary((e.behavior for e in events), categories) else None
        return self.infer(build_inputs(events, k, exclude_item_ids, categories, limits=limits))

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
