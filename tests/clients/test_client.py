"""Unit tests for the client, CLI and load-test tooling; no server needed."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Make `clients` / `loadtests` importable under plain `pytest` too (not only `python -m pytest`).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clients import (  # noqa: E402
    CLIENT_ERROR_CODE,
    DEFAULT_BEHAVIORS,
    Behavior,
    Event,
    Recommendation,
    RecommendClient,
    RecommendedItem,
    RecommendError,
    ServerLimits,
    build_inputs,
    build_inputs_from_arrays,
    parse_limits,
    parse_outputs,
    resolve_behaviors,
    resolve_categories,
    synthetic_history,
)
from clients import cli  # noqa: E402
from clients.ads_client import AdScore, AdsClient, AdsLimits, build_score_ads_inputs, parse_ads_limits  # noqa: E402
from loadtests.run import (  # noqa: E402
    RunStats,
    locust_command,
    median_stats,
    parse_stats_csv,
)
from tritonclient.utils import InferenceServerException  # noqa: E402

EVENTS = [
    Event(3, Behavior.VIEW, 1_700_000_000),
    Event(17, Behavior.VIEW, 1_700_000_060),
    Event(42, Behavior.ADD_TO_CART, 1_700_000_120),
]

# A dataset's ids are its own (large, sparse, negative allowed), its vocabulary need not be the default one.
SHOP_IDS = (1_000_000_000_017, 1_000_000_000_342, 77, -5, 0)
RATINGS = ("rated_1", "rated_2", "rated_3", "rated_4", "rated_5")
CATEGORIES = ("Books", "Clothing, Shoes & Jewelry", "Home & Kitchen")


def _limits(**changes: Any) -> ServerLimits:
    base = ServerLimits(num_items=5000, max_history=32, max_k=50, num_categories=3, max_exclude=1000,
                        behaviors=RATINGS, categories=CATEGORIES, example_item_ids=SHOP_IDS)
    return dataclasses.replace(base, **changes)


def _params(**values: Any) -> dict[str, dict[str, str]]:
    """A config parameters map as the server publishes it (JSON form; lists as JSON text)."""
    return {k: {"string_value": v if isinstance(v, str) else json.dumps(v)} for k, v in values.items()}


RECOMMEND_PARAMS = dict(num_items="100", max_history="50", max_k="20", num_categories="3", max_exclude="1000",
                        behaviors=list(RATINGS), categories=list(CATEGORIES), example_item_ids=list(SHOP_IDS))


def _decode(inp: Any) -> np.ndarray:
    """Raw content of an InferInput back as a numpy array of its declared type and shape."""
    dtype = {"INT64": np.int64, "INT32": np.int32}[inp.datatype()]
    return np.frombuffer(inp._get_content(), dtype=dtype).reshape(inp.shape())


def _by_name(inputs: list[Any]) -> dict[str, Any]:
    return {inp.name(): inp for inp in inputs}


# ---------------------------------------------------------------- build_inputs


def test_build_inputs_required_only() -> None:
    inputs = _by_name(build_inputs(EVENTS, 10))
    assert list(inputs) == ["item_ids", "behaviors", "timestamps", "k"]
    expected = {
        "item_ids": ("INT64", [1, 3], [[3, 17, 42]]),
        "behaviors": ("INT32", [1, 3], [[1, 1, 2]]),
        "timestamps": ("INT64", [1, 3], [[1_700_000_000, 1_700_000_060, 1_700_000_120]]),
        "k": ("INT32", [1, 1], [[10]]),
    }
    for name, (datatype, shape, values) in expected.items():
        inp = inputs[name]
        assert inp.datatype() == datatype, name
        assert inp.shape() == shape, name
        assert _decode(inp).tolist() == values, name


def test_build_inputs_with_optional_inputs() -> None:
    inputs = _by_name(build_inputs(EVENTS, 5, exclude_item_ids=[7, 8], category_ids=(2,)))
    assert set(inputs) == {"item_ids", "behaviors", "timestamps", "k", "exclude_item_ids", "category_ids"}
    assert inputs["exclude_item_ids"].datatype() == "INT64"
    assert inputs["exclude_item_ids"].shape() == [1, 2]
    assert _decode(inputs["exclude_item_ids"]).tolist() == [[7, 8]]
    assert inputs["category_ids"].datatype() == "INT32"
    assert inputs["category_ids"].shape() == [1, 1]
    assert _decode(inputs["category_ids"]).tolist() == [[2]]


def test_build_inputs_only_one_optional() -> None:
    assert "category_ids" not in _by_name(build_inputs(EVENTS, 5, exclude_item_ids=[1]))
    assert "exclude_item_ids" not in _by_name(build_inputs(EVENTS, 5, category_ids=[1]))


def test_empty_sequences_are_sent_as_zero_width_tensors() -> None:
    # None omits an optional input; an empty list is sent and left to the server to judge.
    inputs = _by_name(build_inputs([], 3, exclude_item_ids=[], category_ids=[]))
    for name in ("item_ids", "behaviors", "timestamps", "exclude_item_ids", "category_ids"):
        assert inputs[name].shape() == [1, 0], name


def test_build_inputs_does_not_validate_business_limits() -> None:
    # Out-of-range ids, k, behaviors and mismatched lengths all go through untouched.
    inputs = _by_name(build_inputs_from_arrays([0, -5, 10**12], [9], [5, 1], -1, [-1], [10_000]))
    assert _decode(inputs["item_ids"]).tolist() == [[0, -5, 10**12]]
    assert _decode(inputs["behaviors"]).tolist() == [[9]]
    assert _decode(inputs["timestamps"]).tolist() == [[5, 1]]  # decreasing: server's call
    assert _decode(inputs["k"]).tolist() == [[-1]]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": 2**31}, "k"),
        ({"behaviors": [2**31]}, "behaviors"),
        ({"item_ids": [2**63]}, "item_ids"),
        ({"category_ids": [-(2**31) - 1]}, "category_ids"),
    ],
)
def test_values_that_do_not_fit_the_wire_dtype_are_refused(kwargs: dict[str, Any], field: str) -> None:
    # numpy would silently wrap these into different, possibly valid, values.
    args: dict[str, Any] = {"item_ids": [1], "behaviors": [1], "timestamps": [1], "k": 1, **kwargs}
    with pytest.raises(RecommendError) as info:
        build_inputs_from_arrays(**args)
    assert info.value.code == CLIENT_ERROR_CODE
    assert field in info.value.message


def test_client_exposes_build_inputs() -> None:
    inputs = RecommendClient.build_inputs(EVENTS, 4)
    assert [i.name() for i in inputs] == ["item_ids", "behaviors", "timestamps", "k"]


# ------------------------------------------------------------- types & values


def test_behavior_values() -> None:
    assert [(b.name, b.value) for b in Behavior] == [
        ("VIEW", 1),
        ("ADD_TO_CART", 2),
        ("REMOVE_FROM_CART", 3),
        ("PURCHASE", 4),
    ]
    assert Behavior(4) is Behavior.PURCHASE


def test_dataclasses_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVENTS[0].item_id = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RecommendedItem(1, 0.5, "grace").pctr = 0.1  # type: ignore[misc]


def test_synthetic_history_is_valid_and_deterministic() -> None:
    limits = _limits()
    a = synthetic_history(limits, 200, random.Random(7))
    assert a == synthetic_history(limits, 200, random.Random(7))
    assert len(a) == 200
    assert {e.item_id for e in a} <= set(SHOP_IDS)  # only published ids, never 1..num_items
    assert len({e.item_id for e in a}) > 1
    assert all(type(e.behavior) is int and 1 <= e.behavior <= len(RATINGS) for e in a)
    assert len({e.behavior for e in a}) == len(RATINGS)  # unknown vocabulary: drawn uniformly
    assert all(x.timestamp <= y.timestamp for x, y in zip(a, a[1:]))


def test_synthetic_history_default_vocabulary_is_mostly_views() -> None:
    events = synthetic_history(_limits(behaviors=DEFAULT_BEHAVIORS), 400, random.Random(1))
    codes = [e.behavior for e in events]
    assert set(codes) <= {1, 2, 3, 4}
    assert codes.count(1) > len(codes) / 2


def test_synthetic_history_works_with_any_vocabulary_order() -> None:
    # Weights are keyed by name, not by code: a reordered default vocabulary still means mostly views.
    events = synthetic_history(_limits(behaviors=("purchase", "view")), 300, random.Random(2))
    assert [e.behavior for e in events].count(2) > 200


def test_synthetic_history_needs_published_ids() -> None:
    with pytest.raises(TypeError, match="example_item_ids"):
        synthetic_history(50, 3, random.Random(0))  # the old num_items form: ids need not be 1..num_items
    with pytest.raises(RecommendError, match="example_item_ids") as info:
        synthetic_history(_limits(example_item_ids=()), 3, random.Random(0))
    assert info.value.code == CLIENT_ERROR_CODE


# ------------------------------------------------------------ result parsing


def test_parse_outputs() -> None:
    rec = parse_outputs(
        np.array([[42, 7, 9]], dtype=np.int64),
        np.array([[0.5, 0.25, 0.125]], dtype=np.float32),
        np.array([[b"grace", b"embedding_knn", b"some_future_source"]], dtype=object),
        "1",
    )
    assert rec == Recommendation(
        items=(
            RecommendedItem(42, 0.5, "grace"),
            RecommendedItem(7, 0.25, "embedding_knn"),
            RecommendedItem(9, 0.125, "some_future_source"),
        ),
        model_version="1",
    )
    assert all(type(i.item_id) is int and type(i.pctr) is float for i in rec.items)


def test_parse_outputs_empty_and_no_version() -> None:
    empty = np.zeros((1, 0))
    rec = parse_outputs(empty.astype(np.int64), empty.astype(np.float32), empty.astype(object), "")
    assert rec == Recommendation(items=(), model_version=None)


def test_parse_outputs_missing_output() -> None:
    with pytest.raises(RecommendError) as info:
        parse_outputs(np.array([[1]], dtype=np.int64), None, np.array([[b"grace"]], dtype=object))
    assert info.value.code == CLIENT_ERROR_CODE
    assert "pctr" in info.value.message


def test_parse_outputs_size_mismatch() -> None:
    with pytest.raises(RecommendError, match="sizes differ"):
        parse_outputs(
            np.array([[1, 2]], dtype=np.int64),
            np.array([[0.1]], dtype=np.float32),
            np.array([[b"grace", b"grace"]], dtype=object),
        )


def test_parse_limits() -> None:
    params = _params(**{**RECOMMEND_PARAMS, "num_items": "5000", "max_history": "32", "max_k": "50",
                        "num_categories": " 3 ", "unrelated": "x"})
    assert parse_limits(params) == _limits()
    # Plain strings (not the JSON form) are read too.
    assert parse_limits({k: v["string_value"] for k, v in params.items()}) == _limits()


def test_parse_limits_default_vocabulary_matches_behavior_enum() -> None:
    limits = parse_limits(_params(**{**RECOMMEND_PARAMS, "behaviors": list(DEFAULT_BEHAVIORS)}))
    assert limits.behaviors == DEFAULT_BEHAVIORS
    assert [limits.behaviors[b - 1] for b in Behavior] == [b.name.lower() for b in Behavior]


def test_parse_limits_missing_parameter() -> None:
    with pytest.raises(RecommendError, match="max_k") as info:
        parse_limits({"num_items": {"string_value": "1"}, "max_history": {"string_value": "1"}})
    assert info.value.code == CLIENT_ERROR_CODE


@pytest.mark.parametrize("name", ["max_exclude", "behaviors", "categories", "example_item_ids"])
def test_parse_limits_names_a_missing_new_parameter(name: str) -> None:
    params = _params(**{k: v for k, v in RECOMMEND_PARAMS.items() if k != name})
    with pytest.raises(RecommendError, match=f"'{name}' is missing") as info:
        parse_limits(params)
    assert info.value.code == CLIENT_ERROR_CODE


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("num_items", "many"),
        ("max_exclude", "[1000]"),
        ("behaviors", "view,purchase"),  # not JSON
        ("behaviors", "[]"),  # an empty vocabulary has no codes
        ("behaviors", '["view", "view"]'),  # a code per name: duplicates are ambiguous
        ("behaviors", '["view", 2]'),
        ("behaviors", '["view", " "]'),
        ("behaviors", '{"view": 1}'),
        ("categories", '"Books"'),
        ("categories", '["Books", null]'),
        ("categories", '["Books", "Books"]'),
        ("example_item_ids", "[1, 2"),
        ("example_item_ids", '["1000000000017"]'),  # ids are ints, not their text
        ("example_item_ids", "[1.5]"),
        ("example_item_ids", "[true]"),
        ("example_item_ids", "[9223372036854775808]"),  # past int64
        ("example_item_ids", "17"),
    ],
)
def test_parse_limits_names_a_malformed_parameter(name: str, raw: str) -> None:
    with pytest.raises(RecommendError, match=f"'{name}' is malformed") as info:
        parse_limits(_params(**{**RECOMMEND_PARAMS, name: raw}))
    assert info.value.code == CLIENT_ERROR_CODE
    assert raw[:20] in info.value.message


def test_parse_limits_accepts_empty_categories_and_examples() -> None:
    # Malformed only when not a list: what is missing is refused where it is used (name lookups, synthetic).
    limits = parse_limits(_params(**{**RECOMMEND_PARAMS, "categories": [], "example_item_ids": []}))
    assert (limits.categories, limits.example_item_ids) == ((), ())


# --------------------------------------------------- vocabulary & categories


def test_resolve_behaviors_names_and_codes() -> None:
    assert resolve_behaviors(["rated_5", 2, "rated_1", 99], RATINGS) == [5, 2, 1, 99]  # codes sent as given
    assert _limits().behavior_codes(["rated_3"]) == [3]
    assert resolve_behaviors([np.int32(3)], None) == [3]


def test_resolve_behaviors_unknown_name_lists_the_vocabulary() -> None:
    with pytest.raises(RecommendError) as info:
        resolve_behaviors(["rated_1", "view"], RATINGS)
    assert info.value.code == CLIENT_ERROR_CODE
    assert "'view'" in info.value.message
    assert "1=rated_1, 2=rated_2, 3=rated_3, 4=rated_4, 5=rated_5" in info.value.message


def test_behavior_enum_is_resolved_by_name_not_by_code() -> None:
    # The default vocabulary: the same codes as the enum.
    assert resolve_behaviors(list(Behavior), DEFAULT_BEHAVIORS) == [1, 2, 3, 4]
    # Another order: the server's code for the same event.
    assert resolve_behaviors([Behavior.PURCHASE, Behavior.VIEW], ("view", "purchase")) == [2, 1]
    # A vocabulary without the event: refused, never sent as the default code (which is rated_1 there).
    with pytest.raises(RecommendError, match="Behavior.VIEW .*rated_1") as info:
        resolve_behaviors([Behavior.VIEW], RATINGS)
    assert info.value.code == CLIENT_ERROR_CODE
    # No vocabulary known (raw building): the enum's value.
    assert resolve_behaviors([Behavior.ADD_TO_CART], None) == [2]


def test_names_need_a_vocabulary() -> None:
    with pytest.raises(RecommendError, match="needs the server's vocabulary"):
        resolve_behaviors(["view"], None)
    with pytest.raises(RecommendError, match="needs the server's category names"):
        resolve_categories(["Books"], None)


def test_resolve_categories() -> None:
    assert resolve_categories(["Home & Kitchen", 0, "Clothing, Shoes & Jewelry", 17], CATEGORIES) == [2, 0, 1, 17]
    assert _limits().category_indices(["Books"]) == [0]
    with pytest.raises(RecommendError) as info:
        resolve_categories(["books"], CATEGORIES)  # names are exact
    assert info.value.code == CLIENT_ERROR_CODE
    assert "0=Books, 1=Clothing, Shoes & Jewelry, 2=Home & Kitchen" in info.value.message
    with pytest.raises(RecommendError, match=r"\(none published\)"):
        resolve_categories(["Books"], ())


def test_build_inputs_resolves_names_with_limits() -> None:
    events = [Event(SHOP_IDS[0], "rated_4", 1), Event(SHOP_IDS[3], 2, 2)]
    inputs = _by_name(build_inputs(events, 5, category_ids=["Books", 2], limits=_limits()))
    assert _decode(inputs["item_ids"]).tolist() == [[SHOP_IDS[0], SHOP_IDS[3]]]
    assert _decode(inputs["behaviors"]).tolist() == [[4, 2]]
    assert _decode(inputs["category_ids"]).tolist() == [[0, 2]]
    with pytest.raises(RecommendError, match="needs the server's vocabulary"):
        build_inputs(events, 5)


def test_error_from_triton_exception() -> None:
    exc = InferenceServerException("k must be in 1..100", status="StatusCode.INVALID_ARGUMENT")
    err = RecommendError.from_triton(exc)
    assert (err.code, err.message) == ("StatusCode.INVALID_ARGUMENT", "k must be in 1..100")
    assert RecommendError.from_triton(InferenceServerException("local problem")).code == CLIENT_ERROR_CODE


# ----------------------------------------------- client wiring (fake transport)


class _FakeResponse:
    model_version = "3"


class _FakeResult:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self._outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self._outputs.get(name)

    def get_response(self) -> _FakeResponse:
        return _FakeResponse()


class _FakeTriton:
    """Stands in for tritonclient.grpc.InferenceServerClient."""

    def __init__(self, error: InferenceServerException | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.error = error
        self.params = RECOMMEND_PARAMS if params is None else params
        self.calls: list[tuple[str, Any]] = []
        self.closed = 0

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    def infer(self, model_name: str, inputs: list[Any], **kwargs: Any) -> _FakeResult:
        self.calls.append(("infer", (model_name, inputs, kwargs)))
        self._maybe_fail()
        return _FakeResult(
            {
                "top_item_ids": np.array([[5, 6]], dtype=np.int64),
                "pctr": np.array([[0.75, 0.5]], dtype=np.float32),
                "retrieval_source": np.array([[b"grace", b"embedding_knn"]], dtype=object),
            }
        )

    def get_model_config(self, model_name: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("config", model_name))
        self._maybe_fail()
        return {"config": {"parameters": _params(**self.params)}}

    def is_model_ready(self, model_name: str, **kwargs: Any) -> bool:
        self._maybe_fail()
        return True

    def close(self) -> None:
        self.closed += 1


def _client_with(fake: _FakeTriton) -> RecommendClient:
    client = RecommendClient("127.0.0.1:1", model_name="recommend", timeout_s=2.5)
    client._client.close()
    client._client = fake  # type: ignore[assignment]
    return client


def _infer_calls(fake: _FakeTriton) -> list[Any]:
    return [args for kind, args in fake.calls if kind == "infer"]


def test_recommend_sends_inputs_and_parses_result() -> None:
    fake = _FakeTriton(params={**RECOMMEND_PARAMS, "behaviors": list(DEFAULT_BEHAVIORS)})
    with _client_with(fake) as client:
        rec = client.recommend(EVENTS, 2, exclude_item_ids=[1])
    assert rec.items == (RecommendedItem(5, 0.75, "grace"), RecommendedItem(6, 0.5, "embedding_knn"))
    assert rec.model_version == "3"
    (model, inputs, kwargs), = _infer_calls(fake)
    assert model == "recommend"
    assert _decode(_by_name(inputs)["behaviors"]).tolist() == [[1, 1, 2]]
    assert [i.name() for i in inputs] == ["item_ids", "behaviors", "timestamps", "k", "exclude_item_ids"]
    assert kwargs["client_timeout"] == 2.5
    assert [o.name() for o in kwargs["outputs"]] == ["top_item_ids", "pctr", "retrieval_source"]
    assert fake.closed == 1  # context manager closed the channel


def test_recommend_with_codes_only_needs_no_config() -> None:
    fake = _FakeTriton()
    client = _client_with(fake)
    client.recommend([Event(SHOP_IDS[0], 1, 1), Event(SHOP_IDS[1], 5, 2)], 2, category_ids=[1])
    assert [kind for kind, _ in fake.calls] == ["infer"]


def test_recommend_resolves_names_with_the_published_vocabulary() -> None:
    fake = _FakeTriton()
    client = _client_with(fake)
    events = [Event(SHOP_IDS[0], "rated_5", 1), Event(SHOP_IDS[1], "rated_2", 2)]
    client.recommend(events, 2, category_ids=["Clothing, Shoes & Jewelry"])
    client.recommend(events, 2)
    assert [kind for kind, _ in fake.calls] == ["config", "infer", "infer"]  # fetched once
    sent = _by_name(_infer_calls(fake)[0][1])
    assert _decode(sent["behaviors"]).tolist() == [[5, 2]]
    assert _decode(sent["category_ids"]).tolist() == [[1]]
    # Names outside the vocabulary never reach the server.
    with pytest.raises(RecommendError, match="purchase"):
        client.recommend([Event(SHOP_IDS[0], "purchase", 1)], 2)
    with pytest.raises(RecommendError, match=r"Behavior\.VIEW"):
        client.recommend(EVENTS, 2)
    with pytest.raises(RecommendError, match="'Toys'"):
        client.recommend(events, 2, category_ids=["Toys"])
    assert len(_infer_calls(fake)) == 2


def test_server_errors_become_recommend_error() -> None:
    fake = _FakeTriton(InferenceServerException("k: must be <= max_k 20", status="StatusCode.INVALID_ARGUMENT"))
    client = _client_with(fake)
    with pytest.raises(RecommendError) as info:
        client.recommend(EVENTS, 500)
    assert info.value.code == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message == "k: must be <= max_k 20"
    assert client.is_ready() is False
    with pytest.raises(RecommendError):
        client.limits()


def test_limits_are_cached() -> None:
    fake = _FakeTriton()
    client = _client_with(fake)
    assert client.limits() == ServerLimits(100, 50, 20, 3, 1000, RATINGS, CATEGORIES, SHOP_IDS)
    assert client.limits() is client.limits()
    assert [c for c in fake.calls if c[0] == "config"] == [("config", "recommend")]
    assert client.is_ready() is True
    client.close()
    client.close()  # idempotent
    assert fake.closed == 1


# ------------------------------------------------------------------------ CLI


def test_cli_int_list() -> None:
    assert cli._int_list("3, 17,42") == [3, 17, 42]
    assert cli._int_list("") == []


def test_cli_reports_errors_and_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = _FakeTriton(InferenceServerException("history too long", status="StatusCode.INVALID_ARGUMENT"))
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    assert cli.main(["--items", "1,2", "--k", "3"]) == 2
    assert capsys.readouterr().err.strip() == "error: StatusCode.INVALID_ARGUMENT: history too long"


def test_cli_json_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = _FakeTriton()
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    assert cli.main(["--json", "--k", "2"]) == 0  # default history comes from limits()
    out = json.loads(capsys.readouterr().out)
    assert [i["item_id"] for i in out["items"]] == [5, 6]
    assert out["items"][0] == {"rank": 1, "item_id": 5, "pctr": 0.75, "source": "grace"}
    assert out["model_version"] == "3" and out["latency_ms"] >= 0
    sent = _by_name(_infer_calls(fake)[-1][1])
    ids = _decode(sent["item_ids"])
    assert ids.shape == (1, cli.DEFAULT_HISTORY_LEN)
    assert set(ids.ravel().tolist()) <= set(SHOP_IDS)  # the published example ids, not 1..num_items
    behs = _decode(sent["behaviors"])
    assert ((behs >= 1) & (behs <= len(RATINGS))).all()
    assert out["request"]["item_ids"] == ids.ravel().tolist()
    assert set(out["request"]["behaviors"]) <= set(RATINGS)  # shown by name
    assert out["server"]["behaviors"] == {"1": "rated_1", "2": "rated_2", "3": "rated_3", "4": "rated_4",
                                          "5": "rated_5"}
    assert out["server"]["categories"] == {"0": "Books", "1": "Clothing, Shoes & Jewelry", "2": "Home & Kitchen"}


def test_cli_default_history_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = [_FakeTriton(), _FakeTriton()]
    for fake in fakes:
        monkeypatch.setattr(cli, "RecommendClient", lambda *a, fake=fake, **kw: _client_with(fake))
        assert cli.main(["--json"]) == 0
    a, b = (_by_name(_infer_calls(f)[-1][1]) for f in fakes)
    for name in ("item_ids", "behaviors", "timestamps"):
        assert _decode(a[name]).tolist() == _decode(b[name]).tolist()


def test_cli_accepts_event_and_category_names(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fake = _FakeTriton()
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    items = f"{SHOP_IDS[0]},{SHOP_IDS[1]},{SHOP_IDS[3]}"
    argv = ["--items", items, "--behaviors", "rated_5, 2,rated_1", "--categories", "Books,2",
            "--category", "Clothing, Shoes & Jewelry", "--exclude", str(SHOP_IDS[2])]
    assert cli.main(argv) == 0
    sent = _by_name(_infer_calls(fake)[-1][1])
    assert _decode(sent["item_ids"]).tolist() == [[SHOP_IDS[0], SHOP_IDS[1], SHOP_IDS[3]]]
    assert _decode(sent["behaviors"]).tolist() == [[5, 2, 1]]
    assert _decode(sent["category_ids"]).tolist() == [[0, 2, 1]]
    assert _decode(sent["exclude_item_ids"]).tolist() == [[SHOP_IDS[2]]]
    out = capsys.readouterr().out
    # The table output shows what was read from the server and the history by name.
    assert "behaviors: 1=rated_1 2=rated_2 3=rated_3 4=rated_4 5=rated_5" in out
    assert "categories: 0=Books 1=Clothing, Shoes & Jewelry 2=Home & Kitchen" in out
    assert f"{SHOP_IDS[0]}:rated_5 {SHOP_IDS[1]}:rated_2 {SHOP_IDS[3]}:rated_1" in out


def test_cli_default_behavior_is_code_1(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeTriton()
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    assert cli.main(["--items", "77,-5"]) == 0
    assert _decode(_by_name(_infer_calls(fake)[-1][1])["behaviors"]).tolist() == [[1, 1]]


def test_cli_names_win_over_indices_for_numeric_names(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeTriton(params={**RECOMMEND_PARAMS, "behaviors": ["5", "4", "3"], "categories": ["a", "0"]})
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    assert cli.main(["--items", "77,77,77", "--behaviors", "5,3,9", "--categories", "0,1"]) == 0
    sent = _by_name(_infer_calls(fake)[-1][1])
    assert _decode(sent["behaviors"]).tolist() == [[1, 3, 9]]  # "9" is no name: sent as a code
    assert _decode(sent["category_ids"]).tolist() == [[1, 1]]


@pytest.mark.parametrize(
    ("argv", "listed"),
    [
        (["--items", "77", "--behaviors", "view"], "1=rated_1, 2=rated_2"),
        (["--items", "77", "--categories", "Toys"], "0=Books, 1=Clothing, Shoes & Jewelry"),
    ],
)
def test_cli_unknown_names_exit_2_listing_the_vocabulary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], listed: str
) -> None:
    fake = _FakeTriton()
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {CLIENT_ERROR_CODE}: ") and listed in err
    assert _infer_calls(fake) == []


def test_cli_info(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = _FakeTriton()
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    assert cli.main(["--info"]) == 0
    out = capsys.readouterr().out
    assert "behaviors: 1=rated_1" in out and "categories: 0=Books" in out
    assert "example item ids: " + " ".join(map(str, SHOP_IDS)) in out
    assert cli.main(["--info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["example_item_ids"] == list(SHOP_IDS) and info["max_exclude"] == 1000
    assert _infer_calls(fake) == []


def test_cli_without_published_parameters(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A model that publishes nothing (an internal step, an old build): numeric requests still go out...
    fake = _FakeTriton(params={})
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    assert cli.main(["--items", "77,-5", "--behaviors", "1,3", "--categories", "0"]) == 0
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "'num_items' is missing" in captured.err
    assert "77:1 -5:3" in captured.out
    assert _decode(_by_name(_infer_calls(fake)[-1][1])["behaviors"]).tolist() == [[1, 3]]
    # ...but names and the default history need them: an error naming the parameter.
    for argv in (["--items", "77", "--behaviors", "view"], [], ["--info"]):
        assert cli.main(argv) == 2
        assert "is missing" in capsys.readouterr().err


# ------------------------------------------------------------------------ ads

ADS_PARAMS = dict(num_items="100", max_history="50", num_campaigns="300", max_campaigns="256",
                  behaviors=list(RATINGS), example_item_ids=list(SHOP_IDS))


def test_parse_ads_limits() -> None:
    assert parse_ads_limits(_params(**ADS_PARAMS)) == AdsLimits(100, 50, 300, 256, RATINGS, SHOP_IDS)


@pytest.mark.parametrize(("name", "raw"), [("behaviors", '["a", "a"]'), ("example_item_ids", "[1, \"2\"]"),
                                           ("num_campaigns", "3.5")])
def test_parse_ads_limits_malformed(name: str, raw: str) -> None:
    with pytest.raises(RecommendError, match=f"'{name}' is malformed"):
        parse_ads_limits(_params(**{**ADS_PARAMS, name: raw}))
    with pytest.raises(RecommendError, match=f"'{name}' is missing"):
        parse_ads_limits(_params(**{k: v for k, v in ADS_PARAMS.items() if k != name}))


def test_build_score_ads_inputs_resolves_names() -> None:
    limits = parse_ads_limits(_params(**ADS_PARAMS))
    inputs = _by_name(build_score_ads_inputs([SHOP_IDS[0], 77], ["rated_3", 1], [1, 2], [0, 7], limits))
    assert _decode(inputs["behaviors"]).tolist() == [[3, 1]]
    assert _decode(inputs["item_ids"]).tolist() == [[SHOP_IDS[0], 77]]
    with pytest.raises(RecommendError, match="needs the server's vocabulary"):
        build_score_ads_inputs([77], ["rated_3"], [1], [0])
    with pytest.raises(RecommendError, match="1=rated_1"):
        build_score_ads_inputs([77], [Behavior.PURCHASE], [1], [0], limits)


class _FakeAdsTriton(_FakeTriton):
    def infer(self, model_name: str, inputs: list[Any], **kwargs: Any) -> _FakeResult:
        self.calls.append(("infer", (model_name, inputs, kwargs)))
        n = _by_name(inputs)["campaign_ids"].shape()[1]
        return _FakeResult({"pctr": np.full((1, n), 0.25, np.float32),
                            "model_source": np.array([[b"warm"] * n], dtype=object)})


def test_ads_client_limits_and_names() -> None:
    fake = _FakeAdsTriton(params=ADS_PARAMS)
    client = AdsClient("127.0.0.1:1")
    client._client.close()
    client._client = fake  # type: ignore[assignment]
    assert client.score_ads([77], [2], [1], [3]) == [AdScore(3, 0.25, "warm")]
    assert [kind for kind, _ in fake.calls] == ["infer"]  # codes only: no config needed
    limits = client.limits()
    assert limits is client.limits() and limits.example_item_ids == SHOP_IDS
    events = synthetic_history(limits, 6, random.Random(3))
    assert len(client.score_events(events, [0, 1])) == 2
    assert client.score_ads([77, 0], ["rated_5", "rated_1"], [1, 2], [0]) == [AdScore(0, 0.25, "warm")]
    assert [c for c in fake.calls if c[0] == "config"] == [("config", "score_ads")]
    sent = [_by_name(args[1]) for args in _infer_calls(fake)]
    assert _decode(sent[1]["item_ids"]).ravel().tolist() == [e.item_id for e in events]
    assert set(_decode(sent[1]["item_ids"]).ravel().tolist()) <= set(SHOP_IDS)
    assert _decode(sent[2]["behaviors"]).tolist() == [[5, 1]]


# ------------------------------------------------------- load-test stats CSV

# Header exactly as locust 2.47 writes `<prefix>_stats.csv`.
STATS_HEADER = [
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time",
    "Average Response Time", "Min Response Time", "Max Response Time", "Average Content Size",
    "Requests/s", "Failures/s", "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%",
    "99.9%", "99.99%", "100%",
]  # fmt: skip


def _write_stats(path: Path, rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(STATS_HEADER)
        writer.writerows(rows)
    return path


def test_parse_stats_csv(tmp_path: Path) -> None:
    percentiles = [3, 3, 4, 4, 5, 7, 9, 12, 20, 31, 31]
    path = _write_stats(
        tmp_path / "run_stats.csv",
        [
            ["grpc", "limits", 4, 0, 2, 2.1, 1.0, 3.0, 0.0, 0.2, 0.0, *[2] * 11],
            ["grpc", "recommend", 9000, 3, 3, 3.4, 0.9, 31.0, 10.0, 449.5, 0.15, *percentiles],
            ["", "Aggregated", 9004, 3, 3, 3.4, 0.9, 31.0, 9.9, 449.7, 0.15, *percentiles],
        ],
    )
    assert parse_stats_csv(path) == RunStats(
        requests=9004, failures=3, rps=449.7, avg_ms=3.4, p50_ms=3.0, p95_ms=7.0, p99_ms=12.0
    )


def test_parse_stats_csv_no_requests(tmp_path: Path) -> None:
    # What locust writes when nothing was sent: zeros and N/A percentiles.
    path = _write_stats(tmp_path / "s.csv", [["", "Aggregated", 0, 0, 0, 0, 0, 0, 0, 0, 0, *["N/A"] * 11]])
    stats = parse_stats_csv(path)
    assert (stats.requests, stats.rps, stats.avg_ms, stats.p50_ms, stats.p99_ms) == (0, 0.0, None, None, None)


def test_parse_stats_csv_without_aggregated_row(tmp_path: Path) -> None:
    path = _write_stats(tmp_path / "s.csv", [["grpc", "recommend", 1, 0, 1, 1, 1, 1, 1, 1, 0, *[1] * 11]])
    with pytest.raises(ValueError, match="Aggregated"):
        parse_stats_csv(path)


def test_median_stats() -> None:
    runs = [
        RunStats(100, 0, 10.0, 2.0, 2.0, 5.0, 9.0),
        RunStats(300, 0, 30.0, 1.0, 1.0, 3.0, 4.0),
        RunStats(200, 1, 20.0, None, None, None, None),
    ]
    med = median_stats(runs)
    assert (med.requests, med.failures, med.rps) == (200, 0, 20.0)
    assert (med.avg_ms, med.p50_ms, med.p95_ms, med.p99_ms) == (1.5, 1.5, 4.0, 6.5)


def test_locust_command() -> None:
    cmd = locust_command("127.0.0.1:8001", 4, 2.0, 20, "/tmp/x/run")
    joined = " ".join(cmd)
    assert cmd[1:3] == ["-m", "locust"]
    assert cmd[cmd.index("-f") + 1].endswith("loadtests/locustfile.py")
    for part in ("--headless", "-u 4", "-r 2.0", "-t 20s", "--host 127.0.0.1:8001", "--csv /tmp/x/run", "--only-summary"):
        assert part in joined
