"""serving.metrics against a fake python backend (pb_utils), and the scaffold's counting in `execute`: batch sizes,
rejections by field, and a step's served-result counters (each answer counted once)."""

from __future__ import annotations

import time
import types
import weakref

import numpy as np
import pytest

from serving import graph, metrics
from serving.backend import StepModel
from serving.contract import RequestError, ServingLimits
from serving.steps import CountedRuns, count_values

LIMITS = ServingLimits(num_items=100, num_categories=4)


# --- a fake triton_python_backend_utils ---------------------------------------------------------------------
class FakeMetric:
    """Like the python backend's, it does not keep its family alive."""

    def __init__(self, family, labels, buckets=None):
        self.name, self.log, self.labels, self.buckets = family.name, family.log, labels, buckets
        self.increments, self.observations = [], []
        family.log.append(("metric", family.name, dict(labels)))

    def __del__(self):
        self.log.append(("metric deleted", self.name))

    def increment(self, value):
        self.increments.append(value)

    def observe(self, value):
        self.observations.append(value)


def fake_pb(histograms: bool = True):
    log: list = []

    class MetricFamily:
        COUNTER, GAUGE = "COUNTER", "GAUGE"

        def __init__(self, name, description, kind):
            self.name, self.description, self.kind, self.log = name, description, kind, log
            self._metrics = []
            log.append(("family", name, kind))

        def Metric(self, labels=None, buckets=None):  # noqa: N802 - the python backend's spelling
            if self.kind == "HISTOGRAM" and buckets is None:
                raise ValueError("Missing required buckets")
            metric = FakeMetric(self, labels or {}, buckets)
            self._metrics.append(weakref.ref(metric))
            return metric

        @property
        def metrics(self):
            return [m() for m in self._metrics if m() is not None]

        def __del__(self):
            log.append(("family deleted", self.name))

    if histograms:
        MetricFamily.HISTOGRAM = "HISTOGRAM"

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code):
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors, error

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def as_numpy(self):
            return self.value

    class Logger:
        lines: list = []

        @classmethod
        def log_error(cls, message):
            cls.lines.append(("error", message))

        log_info = log_warn = log_error

    def get_input_tensor_by_name(request, name):
        return Tensor(name, request[name]) if name in request else None

    return types.SimpleNamespace(MetricFamily=MetricFamily, TritonError=TritonError, Logger=Logger, Tensor=Tensor,
                                 InferenceResponse=InferenceResponse, get_input_tensor_by_name=get_input_tensor_by_name,
                                 log=log)


def family(registry: metrics.Metrics, name: str):
    return registry._families[name]


# --- the registry -------------------------------------------------------------------------------------------
def test_outside_triton_metrics_are_checked_no_ops():
    registry = metrics.Metrics.in_triton()  # triton_python_backend_utils is not importable here
    assert not registry.enabled
    counter = registry.counter(metrics.RECOMMEND_ITEMS, source="grace")
    counter.add(3)
    registry.flush()
    hist = registry.histogram(metrics.BATCH_SIZE, model="picky")
    hist.observe(4)
    registry.start()  # no thread: nothing to send
    registry.close()
    assert (counter.total, hist.count, hist.sum) == (3, 1, 4)
    with pytest.raises(ValueError, match="labels"):
        registry.counter(metrics.RECOMMEND_ITEMS, model="picky")
    with pytest.raises(TypeError, match="histogram"):
        registry.counter(metrics.BATCH_SIZE, model="picky")
    with pytest.raises(ValueError, match="only goes up"):
        counter.add(-1)


def test_counters_are_created_once_and_sent_once_per_flush():
    pb = fake_pb()
    registry = metrics.Metrics(pb)
    grace = registry.counter(metrics.RECOMMEND_ITEMS, source="grace")
    assert registry.counter(metrics.RECOMMEND_ITEMS, source="grace") is grace
    recent = registry.counter(metrics.RECOMMEND_ITEMS, source="recent")
    grace.add(2)
    grace.add(3)
    registry.flush()
    registry.flush()  # nothing pending: nothing sent
    assert _increments(registry, "recserve_recommend_items_total") == {(("source", "grace"),): 5.0,
                                                                        (("source", "recent"),): 0.0}
    assert [e for e in pb.log if e[0] == "family"] == [("family", "recserve_recommend_items_total", "COUNTER")]
    assert [len(m.increments) for m in family(registry, "recserve_recommend_items_total").metrics] == [1, 0]


def test_a_histogram_is_prometheus_counters_sent_in_one_update_each():
    registry = metrics.Metrics(fake_pb())
    hist = registry.histogram(metrics.BATCH_SIZE, model="picky")
    for size in (3, 5, 1):
        hist.observe(size)
    registry.flush()
    buckets = {dict(labels)["le"]: value for labels, value in _increments(registry, "recserve_batch_size_bucket").items()}
    assert buckets == {"1": 1.0, "2": 1.0, "4": 2.0, "8": 3.0, "16": 3.0, "32": 3.0, "64": 3.0, "+Inf": 3.0}
    assert _increments(registry, "recserve_batch_size_sum") == {(("model", "picky"),): 9.0}
    assert _increments(registry, "recserve_batch_size_count") == {(("model", "picky"),): 3.0}
    assert all(len(m.increments) <= 1 for m in family(registry, "recserve_batch_size_bucket").metrics)
    assert all(f.kind == "COUNTER" for f in registry._families.values())


def test_the_flusher_sends_from_its_own_thread_and_close_sends_the_rest():
    registry = metrics.Metrics(fake_pb(), flush_interval_s=0.05)
    counter = registry.counter(metrics.GRACE_BEAM_STEPS)
    registry.start()
    counter.add(2)
    deadline = time.monotonic() + 5
    while not _increments(registry, "recserve_grace_beam_steps_total")[()] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _increments(registry, "recserve_grace_beam_steps_total") == {(): 2.0}
    counter.add(3)
    registry.close()
    assert not registry._flusher.is_alive()
    assert counter.total == 5


def test_close_drops_metrics_before_their_families():
    pb = fake_pb()
    registry = metrics.Metrics(pb)
    counter = registry.counter(metrics.GRACE_BEAM_STEPS)  # a step holds its counters past close
    counter.add(4)
    registry.close()
    assert pb.log == [("family", "recserve_grace_beam_steps_total", "COUNTER"),
                      ("metric", "recserve_grace_beam_steps_total", {}),
                      ("metric deleted", "recserve_grace_beam_steps_total"),
                      ("family deleted", "recserve_grace_beam_steps_total")]
    counter.add(1)  # after close: counted locally, sent nowhere
    registry.flush()


def test_counted_runs_counts_every_decoder_call_and_delegates():
    registry = metrics.Metrics(fake_pb())
    counter = registry.counter(metrics.GRACE_BEAM_STEPS)
    session = types.SimpleNamespace(run=lambda outputs, feeds: [feeds["x"] + 1], get_inputs=lambda: ["past_kv"])
    counted = CountedRuns(session, counter)
    assert [counted.run(None, {"x": i})[0] for i in range(3)] == [1, 2, 3]
    assert counted.get_inputs() == ["past_kv"]
    registry.flush()
    assert _increments(registry, "recserve_grace_beam_steps_total") == {(): 3.0}


def test_count_values_counts_bytes_labels():
    registry = metrics.Metrics(None)
    counters = registry.counters(metrics.RECOMMEND_ITEMS, "source", graph.SOURCE_NAMES)
    count_values(counters, np.array([b"grace", b"recent", b"grace"], dtype=object))
    assert {name: c.total for name, c in counters.items()} == {"grace": 2, "recent": 1, "embedding_knn": 0, "sasrec": 0}


# --- the scaffold -------------------------------------------------------------------------------------------
# A step made for this test from the graph's tensors: what a final step of `recommend` reads and answers.
PICKY = graph.Step("picky", "answers the top-k of its candidates",
                   inputs=(graph.CAND_ITEMS, graph.GRACE_SCORES, graph.K), outputs=(graph.TOP_ITEM_IDS, graph.PCTR, graph.RETRIEVAL_SOURCE))


class PickyRank(StepModel):
    """Answers every request but refuses k == 7 inside run (after the graph's checks): the scaffold redoes the
    batch one by one."""

    STEP = PICKY

    def load(self):
        self.items_by_source = self.metrics.counters(metrics.RECOMMEND_ITEMS, "source", graph.SOURCE_NAMES)

    def run(self, cand_items, grace_scores, k):
        if int(k[0]) == 7:
            raise RequestError("k", "seven is refused")
        n = int(k[0])
        return cand_items[:n], grace_scores[:n], np.array([b"grace"] * (n - 1) + [b"recent"], dtype=object)

    def count_served(self, outputs):
        count_values(self.items_by_source, outputs[graph.RETRIEVAL_SOURCE.name])


def _request(k: int, **changes):
    c, w = LIMITS.max_candidates, LIMITS.beam_width
    request = dict(cand_items=np.arange(c, dtype=np.int64)[None], grace_scores=np.zeros((1, w), np.float32),
                   k=np.array([[k]], np.int32))
    request.update(changes)
    return {name: value for name, value in request.items() if value is not None}


def _served(tmp_path, cls=PickyRank):
    pb = fake_pb()
    step = cls()
    step.pb = pb
    step.setup(tmp_path, LIMITS, metrics.Metrics(pb))
    return step, pb


def _increments(registry, name):
    return {tuple(sorted(m.labels.items())): sum(m.increments) for m in family(registry, name).metrics}


def test_execute_counts_batch_size_rejections_by_field_and_answers_once(tmp_path):
    step, pb = _served(tmp_path)
    requests = [_request(3), _request(7), _request(0), _request(2, cand_items=None), _request(4)]
    responses = step.execute(requests)
    errors = [r.error.code if r.error else None for r in responses]
    assert errors == [None, "INVALID_ARG", "INVALID_ARG", "INVALID_ARG", None]
    assert _increments(step.metrics, "recserve_batch_size_count") == {(("model", "picky"),): 0.0}  # not yet
    step.metrics.flush()
    assert _increments(step.metrics, "recserve_batch_size_count") == {(("model", "picky"),): 1.0}
    assert _increments(step.metrics, "recserve_batch_size_sum") == {(("model", "picky"),): 5.0}
    rejected = _increments(step.metrics, "recserve_rejected_requests_total")
    assert rejected[(("field", "k"), ("model", "picky"))] == 2.0  # k=0 (graph check) and k=7 (run)
    assert rejected[(("field", "cand_items"), ("model", "picky"))] == 1.0  # required input missing
    assert rejected[(("field", "grace_scores"), ("model", "picky"))] == 0.0  # every input's series exists
    # The batch failed on k=7 and was redone one by one: each answered request is counted once.
    items = _increments(step.metrics, "recserve_recommend_items_total")
    assert items == {(("source", "grace"),): 2.0 + 3.0, (("source", "recent"),): 2.0,
                     (("source", "embedding_knn"),): 0.0, (("source", "sasrec"),): 0.0}


def test_a_bug_counts_every_request_of_the_batch_as_an_internal_error(tmp_path):
    class Buggy(PickyRank):
        def run(self, **inputs):
            raise ZeroDivisionError("a bug")

    step, pb = _served(tmp_path, Buggy)
    responses = step.execute([_request(3), _request(0), _request(4)])
    assert [r.error.code for r in responses] == ["INTERNAL", "INVALID_ARG", "INTERNAL"]
    step.metrics.flush()
    assert _increments(step.metrics, "recserve_internal_errors_total") == {(("model", "picky"),): 2.0}
    assert any("internal error" in line and "ZeroDivisionError" in line for _, line in pb.Logger.lines)


def test_a_failing_metric_never_costs_the_answer(tmp_path):
    class Broken(PickyRank):
        def count_served(self, outputs):
            raise KeyError("no such source")

    step, pb = _served(tmp_path, Broken)
    responses = step.execute([_request(3)])
    assert responses[0].error is None and len(responses[0].output_tensors) == 3
    assert any("counting metrics failed" in line for _, line in pb.Logger.lines)


def test_in_process_steps_log_through_logging(tmp_path, caplog):
    step = PickyRank.create(tmp_path, LIMITS)
    with caplog.at_level("INFO", logger="serving.steps.picky"):
        step.log.warning("hello")
    assert [(r.name, r.levelname, r.message) for r in caplog.records] == [("serving.steps.picky", "WARNING",
                                                                           "hello")]
