"""Every internal step of `recommend` answers direct calls from any client: what its neighbours would never
send (ids out of range, oversized lists, NaN, unknown items) is INVALID_ARGUMENT naming the tensor and the
limit, never a traceback, an engine's internals or a path; the server keeps serving."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import RecommendClient
from clients.recommend_client import build_inputs_from_arrays
from models.reference import run_ensemble
from serving import graph
from serving.contract import ServingLimits

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
WIRE = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32}


@pytest.fixture(scope="module")
def tensors(reference):
    """Every tensor the ensemble makes for one good request (the valid inputs of every step)."""
    values = ([5, 9, 9, 31], [1, 1, 2, 1], [1_700_000_000, 1_700_000_060, 1_700_000_100, 1_700_000_300], [10])
    request = {t.name: np.asarray(v, WIRE[t.dtype]) for t, v in zip(graph.RECOMMEND.inputs, values)}
    return run_ensemble(graph.RECOMMEND, reference.steps, request, every_tensor=True)


def _call(url: str, step: graph.Step, feeds: dict[str, np.ndarray]):
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = []
        for tensor in step.inputs:
            if tensor.optional and tensor.name not in feeds:
                continue
            value = np.ascontiguousarray(np.asarray(feeds[tensor.name], WIRE[tensor.dtype])[None])
            item = grpcclient.InferInput(tensor.name, list(value.shape), tensor.dtype)
            item.set_data_from_numpy(value)
            inputs.append(item)
        return client.infer(step.name, inputs, client_timeout=60)
    finally:
        client.close()


def _cases(limits):
    big = 10 ** 5
    return {
        "injected item": (graph.RANK, graph.GRACE_ITEMS, lambda v: _set(v, 0, 999_999_999),
                          ["grace_items", f"1..{limits.num_items}"]),
        "negative history id": (graph.RANK, graph.HIST_ITEMS, lambda v: _set(v, -1, -5), ["hist_items", "-5"]),
        "k zero": (graph.RANK, graph.K, lambda v: np.zeros_like(v), ["k", f"1..{limits.max_k}"]),
        "k huge": (graph.RANK, graph.K, lambda v: np.full_like(v, 10 ** 9), ["k", f"1..{limits.max_k}"]),
        "oversized knn list": (graph.RANK, graph.KNN_ITEMS, lambda v: np.ones(big, np.int64),
                               ["knn_items", f"the maximum is {limits.knn_candidates}"]),
        "unknown category": (graph.RANK, graph.ALLOWED_CATEGORIES, lambda v: np.array([99]),
                             ["allowed_categories", f"0..{limits.num_categories - 1}"]),
        "negative exclude": (graph.RANK, graph.EXCLUDE_IDS, lambda v: np.array([-1]), ["exclude_ids", "-1"]),
        "behavior outside the vocabulary": (graph.RANK, graph.HIST_BEHAVIORS,
                                            lambda v: _set(v, -1, limits.num_behaviors + 1),
                                            ["hist_behaviors", f"0..{limits.num_behaviors}"]),
        # the retrieval steps take the client's request itself and validate it as the ensemble does
        "unknown item (grace)": (graph.GRACE_RETRIEVE, graph.ITEM_IDS, lambda v: _set(v, 0, 999_999_999),
                                 ["item_ids", "unknown item id 999999999"]),
        "unknown behavior (side)": (graph.SIDE_RETRIEVE, graph.BEHAVIORS, lambda v: _set(v, 0, 99),
                                    ["behaviors", "unknown behavior 99"]),
        "history too long (grace)": (graph.GRACE_RETRIEVE, graph.ITEM_IDS,
                                     lambda v: np.resize(v, limits.max_history + 1),
                                     ["item_ids", f"the maximum is {limits.max_history}"]),
        "unknown category (side)": (graph.SIDE_RETRIEVE, graph.CATEGORY_IDS, lambda v: np.array([99], np.int32),
                                    ["category_ids", f"0..{limits.num_categories - 1}"]),
    }


def _set(values: np.ndarray, index: int, value) -> np.ndarray:
    out = values.copy()
    out[index] = value
    return out


CASES = list(_cases(ServingLimits(num_items=1, num_categories=1)))  # the case names


@pytest.mark.parametrize("case", CASES)
def test_internal_step_refuses_what_no_neighbour_sends(triton_server, reference, tensors, case):
    step, tensor, corrupt, words = _cases(reference.limits)[case]
    feeds = {t.name: tensors[t.name] for t in step.inputs if t.name in tensors}
    if tensor.name not in feeds:  # an optional request input: a good value first
        feeds[tensor.name] = np.arange(reference.limits.num_categories, dtype=np.int32)
    _call(triton_server.grpc_url, step, feeds)  # the good call is answered
    feeds[tensor.name] = corrupt(np.asarray(feeds[tensor.name]))
    with pytest.raises(InferenceServerException) as err:
        _call(triton_server.grpc_url, step, feeds)
    message = err.value.message()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT", message
    for word in words:
        assert word in message, message
    assert "Traceback" not in message and "/" not in message.split(":", 1)[-1]


def test_huge_request_to_a_retrieval_step_is_refused_fast_and_server_keeps_serving(triton_server, reference):
    n = 100_000
    feeds = {graph.ITEM_IDS.name: np.ones(n, np.int64), graph.BEHAVIORS.name: np.ones(n, np.int32),
             graph.TIMESTAMPS.name: np.zeros(n, np.int64), graph.K.name: np.array([10], np.int32)}
    for step in (graph.GRACE_RETRIEVE, graph.SIDE_RETRIEVE):
        started = time.perf_counter()
        with pytest.raises(InferenceServerException) as err:
            _call(triton_server.grpc_url, step, feeds)
        assert time.perf_counter() - started < 10
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"the maximum is {reference.limits.max_history}" in err.value.message()
    with RecommendClient(triton_server.grpc_url, timeout_s=60) as client:
        assert len(client.infer(build_inputs_from_arrays([1, 2], [1, 1], [1, 2], 3, None, None)).items) == 3


def test_grace_retrieve_spends_its_beams_on_items_the_request_may_receive(triton_server, reference, tensors):
    """Items in exclude_ids (the request's exclusions, or the history of a dataset without repeats) never come
    out of the beam search, and the beam stays full."""
    feeds = {t.name: tensors[t.name] for t in graph.GRACE_RETRIEVE.inputs if t.name in tensors}
    first = _call(triton_server.grpc_url, graph.GRACE_RETRIEVE, feeds).as_numpy(graph.GRACE_ITEMS.name)[0]
    # the response speaks internal ids, the request the dataset's
    feeds[graph.EXCLUDE_ITEM_IDS.name] = reference.steps[graph.RANK.name].catalog.to_external(first[:5])
    again = _call(triton_server.grpc_url, graph.GRACE_RETRIEVE, feeds).as_numpy(graph.GRACE_ITEMS.name)[0]
    assert len(again) == len(first) and not set(first[:5].tolist()) & set(again.tolist())
    # Not asserted: that the other items all stay. Beam search does not promise it (the freed beams can admit
    # prefixes whose completions outrank a kept item), and a smaller build broke it.
