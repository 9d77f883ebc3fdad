"""Unit tests for the client, CLI and load-test tooling; no server needed."""

from __future__ import annotations

import csv
import dataclasses
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
    synthetic_history,
)
from clients import cli  # noqa: E402
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
    a = synthetic_history(50, 40, random.Random(7))
    assert a == synthetic_history(50, 40, random.Random(7))
    assert len(a) == 40
    assert all(1 <= e.item_id <= 50 for e in a)
    assert all(isinstance(e.behavior, Behavior) for e in a)
    assert all(x.timestamp <= y.timestamp for x, y in zip(a, a[1:]))


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
    params = {
        "num_items": {"string_value": "5000"},
        "max_history": {"string_value": "200"},
        "max_k": {"string_value": "100"},
        "num_categories": {"string_value": " 25 "},
        "unrelated": {"string_value": "x"},
    }
    assert parse_limits(params) == ServerLimits(num_items=5000, max_history=200, max_k=100, num_categories=25)


def test_parse_limits_missing_parameter() -> None:
    with pytest.raises(RecommendError, match="max_k") as info:
        parse_limits({"num_items": {"string_value": "1"}, "max_history": {"string_value": "1"}})
    assert info.value.code == CLIENT_ERROR_CODE


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

    def __init__(self, error: InferenceServerException | None = None) -> None:
        self.error = error
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
        params = {"num_items": "100", "max_history": "50", "max_k": "20", "num_categories": "4"}
        return {"config": {"parameters": {k: {"string_value": v} for k, v in params.items()}}}

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


def test_recommend_sends_inputs_and_parses_result() -> None:
    fake = _FakeTriton()
    with _client_with(fake) as client:
        rec = client.recommend(EVENTS, 2, exclude_item_ids=[1])
    assert rec.items == (RecommendedItem(5, 0.75, "grace"), RecommendedItem(6, 0.5, "embedding_knn"))
    assert rec.model_version == "3"
    (kind, (model, inputs, kwargs)), = fake.calls
    assert (kind, model) == ("infer", "recommend")
    assert [i.name() for i in inputs] == ["item_ids", "behaviors", "timestamps", "k", "exclude_item_ids"]
    assert kwargs["client_timeout"] == 2.5
    assert [o.name() for o in kwargs["outputs"]] == ["top_item_ids", "pctr", "retrieval_source"]
    assert fake.closed == 1  # context manager closed the channel


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
    assert client.limits() == ServerLimits(100, 50, 20, 4)
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
    import json

    fake = _FakeTriton()
    monkeypatch.setattr(cli, "RecommendClient", lambda *a, **kw: _client_with(fake))
    assert cli.main(["--json", "--k", "2"]) == 0  # default history comes from limits()
    out = json.loads(capsys.readouterr().out)
    assert [i["item_id"] for i in out["items"]] == [5, 6]
    assert out["items"][0] == {"rank": 1, "item_id": 5, "pctr": 0.75, "source": "grace"}
    assert out["model_version"] == "3" and out["latency_ms"] >= 0
    sent = _by_name(fake.calls[-1][1][1])
    ids = _decode(sent["item_ids"])
    assert ids.shape == (1, cli.DEFAULT_HISTORY_LEN) and ((ids >= 1) & (ids <= 100)).all()


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
