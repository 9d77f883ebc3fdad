"""`recommend` through the real tritonserver over gRPC, checked against the in-process reference."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from clients import RecommendClient, RecommendError
from clients.recommend_client import build_inputs_from_arrays
from serving import graph
from serving.contract import RequestError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _history(rng: np.random.Generator, num_items: int, n: int):
    items = rng.integers(1, num_items + 1, size=n)
    behaviors = rng.choice([1, 1, 1, 2, 3, 4], size=n)
    timestamps = 1_700_000_000 + np.cumsum(rng.integers(0, 600, size=n))
    return items.tolist(), behaviors.tolist(), timestamps.tolist()


def _requests(limits, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(1, limits.max_history + 1))
        items, behs, ts = _history(rng, limits.num_items, n)
        k = int(rng.integers(1, limits.max_k + 1))
        exclude = rng.integers(1, limits.num_items + 1, size=5).tolist() if i % 3 == 1 else None
        cats = rng.choice(limits.num_categories, size=2, replace=False).tolist() if i % 3 == 2 else None
        out.append((items, behs, ts, k, exclude, cats))
    return out


@pytest.fixture(scope="module")
def client(triton_server):
    with RecommendClient(triton_server.grpc_url, timeout_s=60) as c:
        yield c


def _served(client, request):
    items, behs, ts, k, exclude, cats = request
    return client.infer(build_inputs_from_arrays(items, behs, ts, k, exclude, cats))


def _assert_same(served, expected):
    items, pctr, sources = expected
    assert [r.item_id for r in served.items] == items.tolist()
    np.testing.assert_allclose([r.pctr for r in served.items], pctr, atol=1e-4, rtol=0)
    assert [r.source for r in served.items] == sources


def test_limits_are_published(client, reference):
    limits = client.limits()
    assert limits.num_items == reference.limits.num_items
    assert limits.max_history == reference.limits.max_history
    assert limits.max_k == reference.limits.max_k
    assert limits.num_categories == reference.limits.num_categories


def test_served_equals_in_process_reference(client, reference):
    for request in _requests(reference.limits, 12):
        served = _served(client, request)
        expected = reference.recommend(*request)
        assert 1 <= len(served.items) <= request[3]
        _assert_same(served, expected)


def test_side_sources_are_served_and_equal_the_reference(client, reference, triton_server):
    """The sources beside GRACE (recency, CLIP neighbours, SASRec) end to end: their step called directly equals
    the reference's (SASRec's scores to ONNX Runtime's tolerance), and recency is credited in recommend's answers."""
    limits = reference.limits
    rng = np.random.default_rng(11)
    raw = grpcclient.InferenceServerClient(triton_server.grpc_url)
    step = reference.steps[graph.SIDE_RETRIEVE.name]
    seen_recent = retrieved = 0
    for i in range(8):
        n = int(rng.integers(3, limits.max_history + 1))
        items = rng.choice(np.arange(1, 9), size=n).tolist()  # few distinct items: a repeat-heavy shopper
        behs = rng.choice([1, 1, 2, 3, 4], size=n).tolist()
        ts = (1_700_000_000 + np.cumsum(rng.integers(0, 600, size=n))).tolist()
        request = {graph.ITEM_IDS.name: np.asarray(items, np.int64), graph.BEHAVIORS.name: np.asarray(behs, np.int32),
                   graph.TIMESTAMPS.name: np.asarray(ts, np.int64), graph.K.name: np.array([20], np.int32)}
        if i % 2:  # the newest item excluded (the request speaks the dataset's ids)
            request[graph.EXCLUDE_ITEM_IDS.name] = np.asarray(items[-1:], np.int64)
        inputs = []
        for name, value in request.items():
            tensor = grpcclient.InferInput(name, [1, len(value)], "INT32" if value.dtype == np.int32 else "INT64")
            tensor.set_data_from_numpy(value[None])
            inputs.append(tensor)
        result = raw.infer(graph.SIDE_RETRIEVE.name, inputs)
        expected = step(**request)
        for tensor in graph.SIDE_RETRIEVE.outputs:
            if tensor is graph.SASREC_SCORES:  # the torch model in the reference, its ONNX export served
                np.testing.assert_allclose(result.as_numpy(tensor.name)[0], expected[tensor.name], atol=1e-4)
            else:
                np.testing.assert_array_equal(result.as_numpy(tensor.name)[0], expected[tensor.name])
        retrieved += len(expected[graph.RECENT_ITEMS.name]) > 0
        served = _served(client, (items, behs, ts, 20, None, None))
        _assert_same(served, reference.recommend(items, behs, ts, 20))
        seen_recent += sum(r.source == "recent" for r in served.items)
    raw.close()
    assert retrieved >= 4, "the recent source retrieved nothing for most repeat-heavy histories"
    assert seen_recent > 0, "the recent source never reached a served top-20"


def test_results_respect_filters_and_k(client, reference):
    limits = reference.limits
    items, behs, ts = _history(np.random.default_rng(7), limits.num_items, 20)
    first = _served(client, (items, behs, ts, 10, None, None))
    assert len(first.items) == 10
    assert {r.source for r in first.items} <= set(graph.SOURCE_NAMES)
    pctr = [r.pctr for r in first.items]
    assert all(0.0 < p < 1.0 for p in pctr)  # ordered by the ranker's relevance head, each with its own pCTR
    _assert_same(first, reference.recommend(items, behs, ts, 10))
    exclude = [r.item_id for r in first.items[:5]]
    second = _served(client, (items, behs, ts, 10, exclude, [1]))
    top_category = reference.top_category
    assert not {r.item_id for r in second.items} & set(exclude)
    assert all(top_category[r.item_id] == 1 for r in second.items)
    _assert_same(second, reference.recommend(items, behs, ts, 10, exclude, [1]))


def test_concurrent_requests_are_batched_correctly(client, reference, triton_server):
    """Concurrent requests share ranker batches; each must still get its own answer."""
    requests = _requests(reference.limits, 16, seed=3)
    expected = [reference.recommend(*r) for r in requests]
    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(lambda r: _served(RecommendClient(triton_server.grpc_url, timeout_s=60), r), requests))
    for s, e in zip(served, expected):
        _assert_same(s, e)


def _bad_requests(limits):
    ok_items, ok_behs, ok_ts = [1, 2, 3], [1, 2, 4], [10, 20, 30]
    n = limits.num_items
    return {
        "unknown item id": ((ok_items[:2] + [n + 1], ok_behs, ok_ts, 5, None, None),
                            ["item_ids", f"unknown item id {n + 1}", f"{n} items"]),
        "item id zero": (([0, 2, 3], ok_behs, ok_ts, 5, None, None), ["item_ids", "unknown item id 0"]),
        "empty history": (([], [], [], 5, None, None), ["item_ids", "at least 1"]),
        "k zero": ((ok_items, ok_behs, ok_ts, 0, None, None), ["k", f"1..{limits.max_k}"]),
        "k too large": ((ok_items, ok_behs, ok_ts, limits.max_k + 1, None, None), ["k", f"1..{limits.max_k}"]),
        "mismatched lengths": ((ok_items, ok_behs[:2], ok_ts, 5, None, None), ["behaviors", "lengths"]),
        "history too long": (
            (list(range(1, limits.max_history + 2)), [1] * (limits.max_history + 1),
             list(range(limits.max_history + 1)), 5, None, None), ["item_ids", str(limits.max_history)]),
        "unknown behavior": ((ok_items, [1, 9, 1], ok_ts, 5, None, None), ["behaviors", "9"]),
        "decreasing timestamps": ((ok_items, ok_behs, [30, 20, 10], 5, None, None), ["timestamps", "non-decreasing"]),
        "unknown exclude id": ((ok_items, ok_behs, ok_ts, 5, [n + 5], None),
                               ["exclude_item_ids", f"unknown item id {n + 5}"]),
        "unknown category": ((ok_items, ok_behs, ok_ts, 5, None, [limits.num_categories]),
                             ["category_ids", f"0..{limits.num_categories - 1}"]),
        "negative timestamp": ((ok_items, ok_behs, [-5, 1, 2], 5, None, None), ["timestamps", "-5", "range"]),
        "int64-max timestamp": ((ok_items, ok_behs, [1, 2, 2**63 - 1], 5, None, None), ["timestamps", "range"]),
        "200,000 category ids": ((ok_items, ok_behs, ok_ts, 5, None, [0] * 200_000),
                                 ["category_ids", "200000", f"maximum is {limits.num_categories}"]),
        "too many exclude ids": ((ok_items, ok_behs, ok_ts, 5, [ok_items[0]] * (limits.max_exclude + 1), None),
                                 ["exclude_item_ids", str(limits.max_exclude + 1), f"maximum is {limits.max_exclude}"]),
    }


@pytest.mark.parametrize("case", list(_bad_requests(type("L", (), {
    "num_items": 1, "max_history": 1, "max_k": 1, "num_categories": 1, "max_exclude": 1})())))
def test_bad_input_is_invalid_argument_and_server_keeps_serving(client, reference, case):
    request, expected_words = _bad_requests(reference.limits)[case]
    with pytest.raises(RecommendError) as err:
        _served(client, request)
    assert err.value.code == "StatusCode.INVALID_ARGUMENT"
    for word in expected_words:
        assert word in err.value.message
    # The reference rejects the same request for the same field.
    with pytest.raises(RequestError) as ref_err:
        reference.recommend(*request)
    assert expected_words[0] in str(ref_err.value)
    # And the server still answers a good request.
    assert len(_served(client, ([1, 2, 3], [1, 1, 2], [1, 2, 3], 3, None, None)).items) == 3


def test_wrong_dtype_is_invalid_argument(triton_server):
    raw = grpcclient.InferenceServerClient(triton_server.grpc_url)
    inputs = []
    for name, dtype, value in (("item_ids", "INT32", np.array([[1, 2]], np.int32)),
                               ("behaviors", "INT32", np.array([[1, 1]], np.int32)),
                               ("timestamps", "INT64", np.array([[1, 2]], np.int64)),
                               ("k", "INT32", np.array([[3]], np.int32))):
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    with pytest.raises(Exception) as err:
        raw.infer("recommend", inputs)
    assert "INVALID_ARGUMENT" in str(err.value.status()) and "item_ids" in err.value.message()
    raw.close()
