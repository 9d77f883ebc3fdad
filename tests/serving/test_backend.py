"""The scaffold checks every step's inputs against the graph before the step runs."""

from __future__ import annotations

import numpy as np
import pytest

from serving import graph
from serving.backend import InternalError, StepModel
from serving.contract import RequestError, ServingLimits

LIMITS = ServingLimits(num_items=100, num_categories=4)


# A step made for this test from the graph's tensors (integer ranges, a float, a fixed and a variable length).
ECHO = graph.Step("echo", "returns some of its inputs", inputs=(graph.CAND_ITEMS, graph.GRACE_ITEMS, graph.GRACE_SCORES,
                                                               graph.KNN_ITEMS, graph.EXCLUDE_IDS, graph.K),
                  outputs=(graph.CAND_ITEMS, graph.GRACE_SCORES))


class Echo(StepModel):
    STEP = ECHO

    def run(self, cand_items, grace_items, grace_scores, knn_items, exclude_ids, k):
        return cand_items, grace_scores


def _good():
    w = LIMITS.beam_width
    return dict(cand_items=np.arange(LIMITS.max_candidates, dtype=np.int64), grace_items=np.arange(1, w + 1),
                grace_scores=np.zeros(w, np.float32), knn_items=np.arange(1, 4), exclude_ids=np.array([0]),
                k=np.array([5], np.int32))


@pytest.fixture
def step(tmp_path):
    return Echo.create(tmp_path, LIMITS)


def test_good_inputs_pass_and_outputs_are_named(step):
    out = step(**_good())
    assert list(out) == [t.name for t in ECHO.outputs]


@pytest.mark.parametrize("name, value, words", [
    ("cand_items", 101, "valid range is 0..100"),
    ("cand_items", -1, "value -1 is out of range"),
    ("grace_items", 0, "valid range is 1..100"),
    ("k", 0, f"1..{LIMITS.max_k}"),
    ("grace_scores", np.inf, "finite"),
    ("grace_scores", np.nan, "finite"),
])
def test_out_of_range_values_name_the_tensor_and_the_limit(step, name, value, words):
    inputs = _good()
    inputs[name] = inputs[name].copy()
    inputs[name][0] = value
    with pytest.raises(RequestError, match=words) as err:
        step(**inputs)
    assert err.value.field == name


def test_lengths_and_dtypes(step):
    step(**{**_good(), graph.KNN_ITEMS.name: np.arange(1, LIMITS.knn_candidates + 1)})
    with pytest.raises(RequestError, match=f"has 65 values; the maximum is {LIMITS.knn_candidates}"):
        step(**{**_good(), graph.KNN_ITEMS.name: np.arange(1, 66)})
    with pytest.raises(RequestError, match="integer"):
        step(**{**_good(), graph.EXCLUDE_IDS.name: np.array([0.5])})


def test_internal_error_is_opaque():
    message = str(InternalError("abc123"))
    assert "abc123" in message and "Traceback" not in message and "/" not in message


def test_a_repository_built_from_another_graph_refuses_to_load():
    """A stale config.pbtxt (an output the code no longer has, or lacks) stops the model at load time with a
    message that says to rebuild, instead of serving responses the ensemble does not expect."""
    import json

    from google.protobuf import json_format

    from serving.backend import RepositoryMismatch, check_config
    from serving.configs import step_config

    for step in graph.SERVED_STEPS:
        config = json_format.MessageToDict(step_config(step, LIMITS), preserving_proto_field_name=True)
        check_config(step, json.loads(json.dumps(config)))  # the current render always loads
        stale = dict(config, output=config["output"][:-1])
        with pytest.raises(RepositoryMismatch, match=f"{step.name}.*rebuild"):
            check_config(step, stale)
        retyped = dict(config, input=[dict(e, data_type="TYPE_FP64") for e in config["input"]])
        with pytest.raises(RepositoryMismatch, match="inputs"):
            check_config(step, retyped)
