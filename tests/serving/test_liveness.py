"""The liveness verdict (serving.liveness.check) on a scripted client: a step is hung only when its probe gets no
answer within the deadline and it completed no other request meanwhile."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from serving import graph, liveness


class ScriptedClient:
    """Answers the probe with `error` (or success when None); its completed-request count grows by `grows`
    between the first and the second statistics call."""

    def __init__(self, error: InferenceServerException | None, grows: int):
        self.error, self.grows, self.stats_calls = error, grows, 0

    def get_inference_statistics(self, model, as_json, client_timeout):
        count = 10 + (self.grows if self.stats_calls else 0)
        self.stats_calls += 1
        return {"model_stats": [{"inference_stats": {"success": {"count": str(count)}}}]}

    def infer(self, model, inputs, client_timeout, outputs):
        if self.error is not None:
            raise self.error

        class Result:
            def as_numpy(self, name):
                return np.zeros((1, 1))
        return Result()


PROBE = {graph.K.name: [10], graph.GRACE_ITEMS.name: np.ones(20, np.int64)}
UNAVAILABLE = InferenceServerException("Request timeout expired", status="StatusCode.UNAVAILABLE")
DEADLINE = InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")


def test_answered_probe_is_alive():
    assert liveness.check(ScriptedClient(None, 0), "rank", PROBE, timeout_s=0.05) is None


def test_a_refusal_from_the_step_itself_is_an_answer():
    refused = InferenceServerException("k: 0 is out of range", status="StatusCode.INVALID_ARGUMENT")
    assert liveness.check(ScriptedClient(refused, 0), "rank", PROBE, timeout_s=0.05) is None


@pytest.mark.parametrize("error", [UNAVAILABLE, DEADLINE])
def test_busy_step_that_completes_others_is_not_hung(error):
    assert liveness.check(ScriptedClient(error, 3), "rank", PROBE, timeout_s=0.05) is None


@pytest.mark.parametrize("error", [UNAVAILABLE, DEADLINE])
def test_unanswered_probe_with_nothing_completed_is_hung(error):
    why = liveness.check(ScriptedClient(error, 0), "rank", PROBE, timeout_s=0.05)
    assert why is not None and "no request completed" in why and error.status() in why


def test_stop_ends_the_wait_without_a_verdict():
    stop = threading.Event()
    stop.set()
    assert liveness.check(ScriptedClient(UNAVAILABLE, 0), "rank", PROBE, timeout_s=30.0, stop=stop) is None


def test_probe_feeds_follow_the_graph_dtypes_and_batch_dims():
    feeds = liveness._feeds(graph.RANK, PROBE)
    assert [(f.name(), f.datatype(), f.shape()) for f in feeds] == [("grace_items", "INT64", [1, 20]),
                                                                    ("k", "INT32", [1, 1])]
    text = liveness._feeds(graph.CLIP_EMBED, {graph.TEXT.name: np.array([[b"x"]], np.object_)})
    assert [(f.name(), f.datatype(), f.shape()) for f in text] == [("text", "BYTES", [1, 1])]  # rows are the batch
