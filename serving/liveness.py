"""Liveness of the served python steps: each one answers a real request within a deadline.

A python stub that hangs (a deadlock, a stopped process, a stuck system call) keeps its process and its READY
state: tritonserver goes on dispatching to it, and every request waits until its queue timeout refuses it. The
launcher's watchdog therefore probes every step with a valid request, built once when the server is ready from
the server's own answers (the `recommend` graph run step by step over gRPC from a synthetic history made of the
build's published example items), and calls a step hung when its probe gets no answer within the deadline *and*
the step completed no request meanwhile (a busy step still completes others, so load alone never counts as hung).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving import graph
from serving.contract import ServingLimits

log = logging.getLogger("serving.liveness")

NUMPY_DTYPES = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "UINT8": np.uint8, "STRING": np.object_}
PROBE_TEXT = b"liveness probe"
# An answer that comes from the step itself proves it alive, even a refusal of the request.
ANSWERED = ("StatusCode.INVALID_ARGUMENT",)


def _feeds(step: graph.Step, values: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
    feeds = []
    for tensor in step.inputs:
        if tensor.name not in values:
            continue  # an optional input the probe leaves out
        value = np.asarray(values[tensor.name]).astype(NUMPY_DTYPES[tensor.dtype])
        if not step.batching.rows_are_batch:
            value = value[None]  # one request = a batch of one
        feed = grpcclient.InferInput(tensor.name, list(value.shape), tensor.dtype.replace("STRING", "BYTES"))
        feed.set_data_from_numpy(np.ascontiguousarray(value))
        feeds.append(feed)
    return feeds


def infer_step(client: grpcclient.InferenceServerClient, step: graph.Step, values: Mapping[str, np.ndarray],
               timeout_s: float) -> dict[str, np.ndarray]:
    """One request to a served step; its outputs (without the batch dimension)."""
    result = client.infer(step.name, _feeds(step, values), client_timeout=timeout_s,
                          outputs=[grpcclient.InferRequestedOutput(t.name) for t in step.outputs])
    return {t.name: result.as_numpy(t.name)[0] for t in step.outputs}


def probe_inputs(client: grpcclient.InferenceServerClient, limits: ServingLimits, models: set[str],
                 timeout_s: float = 30.0) -> dict[str, dict[str, np.ndarray]]:
    """A valid request for every served python step in `models` (the loaded ones): the recommend steps get the
    tensors their predecessors answered for a synthetic three-event history; score_ads and clip_embed get a
    request of their own. Raises InferenceServerException when a step does not answer."""
    items = np.array((list(limits.example_item_ids) * 3)[:3] or [1, 1, 1], np.int64)
    now = int(time.time())
    request = {graph.ITEM_IDS.name: items, graph.BEHAVIORS.name: np.ones(len(items), np.int32),
               graph.TIMESTAMPS.name: np.arange(now - len(items), now, dtype=np.int64), graph.K.name: [10]}
    probes: dict[str, dict[str, np.ndarray]] = {}
    tensors = dict(request)
    if all(step.name in models for step in graph.RECOMMEND.steps):
        for step in graph.RECOMMEND.steps:  # in execution order: every input is known by the time it is needed
            probes[step.name] = {t.name: tensors[t.name] for t in step.inputs if t.name in tensors}
            tensors.update(infer_step(client, step, probes[step.name], timeout_s))
    if graph.SCORE_ADS.name in models and limits.num_campaigns > 0:
        probes[graph.SCORE_ADS.name] = {**{k: request[k] for k in (graph.ITEM_IDS.name, graph.BEHAVIORS.name,
                                                                    graph.TIMESTAMPS.name)},
                                        graph.CAMPAIGN_IDS.name: np.array([0], np.int64)}
    if graph.CLIP_EMBED.name in models:
        probes[graph.CLIP_EMBED.name] = {graph.TEXT.name: np.array([[PROBE_TEXT]], np.object_)}
    for name in (graph.SCORE_ADS.name, graph.CLIP_EMBED.name):
        if name in probes:
            infer_step(client, graph.STEPS[name], probes[name], timeout_s)  # a probe must be answerable
    return probes


def completed_requests(client: grpcclient.InferenceServerClient, model: str) -> int:
    """Requests `model` has answered successfully since it was loaded (summed over its versions)."""
    stats = client.get_inference_statistics(model, as_json=True, client_timeout=5.0)
    return sum(int(s.get("inference_stats", {}).get("success", {}).get("count", 0))
               for s in stats.get("model_stats", []))


def check(client: grpcclient.InferenceServerClient, model: str, values: Mapping[str, np.ndarray],
          timeout_s: float, stop: threading.Event | None = None) -> str | None:
    """None when `model` is alive (or `stop` was set while waiting); otherwise why it is considered hung."""
    try:
        before = completed_requests(client, model)
    except InferenceServerException:
        return None  # the server itself is not answering: not this step's fault (the launcher sees the exit)
    started = time.monotonic()
    try:
        infer_step(client, graph.STEPS[model], values, timeout_s)
        return None
    except InferenceServerException as exc:
        if exc.status() in ANSWERED:
            return None
        failure = f"{exc.status()}: {exc.message()}"
    waited = time.monotonic() - started
    if waited < timeout_s:  # refused at once (a full queue, a dead stub): give the step the whole deadline
        if (stop or threading.Event()).wait(timeout_s - waited):
            return None
    try:
        if completed_requests(client, model) > before:
            return None  # busy, not hung: it answered others meanwhile
    except InferenceServerException:
        return None
    return f"no answer to a liveness probe within {timeout_s:.0f} s ({failure}) and no request completed meanwhile"
