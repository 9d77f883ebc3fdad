"""Custom Prometheus metrics of the served steps, served by tritonserver's metrics endpoint next to its own
`nv_*` metrics, through the python backend's `pb_utils.MetricFamily` / `pb_utils.Metric`.

Every metric is declared here once (name, help text, kind, label names). A step creates the ones it uses once per
model instance, when it loads (the scaffold, `serving.backend.StepModel.setup`, hands it a `Metrics`). Outside
Triton (the in-process reference, `StepModel.create`, unit tests) `triton_python_backend_utils` does not exist:
`Metrics(None)` hands out the same objects, checked the same way, whose updates go nowhere.

Each update of a Triton metric is a message from the python stub to the server process, so counters add up
locally and are sent once per `execute` (`Metrics.flush`, which the scaffold calls after every batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from serving import graph

COUNTER, HISTOGRAM = "counter", "histogram"


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    description: str
    kind: str  # COUNTER or HISTOGRAM
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds (+Inf is implied)


RECOMMEND_ITEMS = MetricSpec(
    "recserve_recommend_items_total", "items in the served top-k (calibrate), by the retrieval source that found them",
    COUNTER, ("source",))
SCORE_ADS_PREDICTIONS = MetricSpec(
    "recserve_score_ads_predictions_total", "score_ads predictions (one per campaign), by the weights that made them: "
    "warm (the campaign's own LR) or a cold-start source (hyper, llm, median)", COUNTER, (graph.MODEL_SOURCE.name,))
REJECTED_REQUESTS = MetricSpec(
    "recserve_rejected_requests_total", "requests a step answered INVALID_ARGUMENT, by step and by the field the "
    "error names", COUNTER, ("model", "field"))
INTERNAL_ERRORS = MetricSpec(
    "recserve_internal_errors_total", "requests a step answered INTERNAL (a bug; the server log has the incident's "
    "traceback), by step", COUNTER, ("model",))
BATCH_SIZE = MetricSpec(
    "recserve_batch_size", "requests per execution of a step (the dynamic batch it was handed)", HISTOGRAM,
    ("model",), buckets=(1, 2, 4, 8, 16, 32, 64))
GRACE_BEAM_STEPS = MetricSpec(
    "recserve_grace_beam_steps_total", "GRACE decoder-step calls (ONNX Runtime runs of the cached decoder step, one "
    "per beam-search level) in grace_retrieve", COUNTER)

ALL = (RECOMMEND_ITEMS, SCORE_ADS_PREDICTIONS, REJECTED_REQUESTS, INTERNAL_ERRORS, BATCH_SIZE, GRACE_BEAM_STEPS)


class Counter:
    """A counter child (one label set). `add` is local; `Metrics.flush` sends what was added since."""

    def __init__(self, metric=None):
        self._metric, self.pending, self.total = metric, 0, 0

    def add(self, amount: int | float = 1) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up, got {amount}")
        self.pending += amount
        self.total += amount

    def flush(self) -> None:
        if self.pending and self._metric is not None:
            self._metric.increment(float(self.pending))
        self.pending = 0


class Histogram:
    """A histogram child (one label set). Where the python backend has no HISTOGRAM kind it is two counters,
    `<name>_sum` and `<name>_count`, so `rate(_sum) / rate(_count)` reads the mean either way."""

    def __init__(self, metric=None, sum_counter: Counter | None = None, count_counter: Counter | None = None):
        self._metric, self._sum, self._count = metric, sum_counter, count_counter
        self.count, self.sum = 0, 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        if self._metric is not None:
            self._metric.observe(float(value))
        elif self._sum is not None:
            self._sum.add(value)
            self._count.add(1)


class Metrics:
    """The metric families and children of one model instance. `pb_utils`: the python backend's module (inside
    Triton), or None (a no-op registry)."""

    def __init__(self, pb_utils=None):
        self._pb = pb_utils
        self._families: dict[str, object] = {}
        self._children: dict[tuple, Counter | Histogram] = {}

    @classmethod
    def in_triton(cls) -> "Metrics":
        try:
            import triton_python_backend_utils as pb_utils  # only importable inside the python stub
        except ImportError:
            return cls(None)
        return cls(pb_utils)

    @property
    def enabled(self) -> bool:
        return self._pb is not None

    @property
    def has_histograms(self) -> bool:
        return self._pb is not None and hasattr(self._pb.MetricFamily, "HISTOGRAM")

    def counter(self, spec: MetricSpec, **labels: str) -> Counter:
        self._check(spec, COUNTER, labels)
        key = (spec.name, tuple(sorted(labels.items())))
        if key not in self._children:
            self._children[key] = Counter(self._triton_metric(spec.name, spec.description, "COUNTER", labels))
        return self._children[key]

    def histogram(self, spec: MetricSpec, **labels: str) -> Histogram:
        self._check(spec, HISTOGRAM, labels)
        key = (spec.name, tuple(sorted(labels.items())))
        if key not in self._children:
            if not self.enabled:
                child = Histogram()
            elif self.has_histograms:
                child = Histogram(self._triton_metric(spec.name, spec.description, "HISTOGRAM", labels,
                                                      buckets=[float(b) for b in spec.buckets]))
            else:
                parts = [self.counter(MetricSpec(f"{spec.name}_{part}", f"{spec.description} ({part})", COUNTER,
                                                 spec.labels), **labels) for part in ("sum", "count")]
                child = Histogram(None, *parts)
            self._children[key] = child
        return self._children[key]

    def counters(self, spec: MetricSpec, label: str, values: Iterable[str], **labels: str) -> dict[str, Counter]:
        """One counter per value of `label` (created now, so each series reads 0 before its first event)."""
        return {value: self.counter(spec, **labels, **{label: value}) for value in values}

    def flush(self) -> None:
        """Sends every counter's pending amount to Triton (once per execute)."""
        for child in self._children.values():
            if isinstance(child, Counter):
                child.flush()

    def close(self) -> None:
        """Drops the Triton metrics before their families (the python backend requires that order)."""
        self.flush()
        for child in self._children.values():  # steps keep their children: let go of the Triton metric itself
            child._metric = None
            if isinstance(child, Histogram):
                child._sum = child._count = None
        self._children.clear()
        self._families.clear()

    @staticmethod
    def _check(spec: MetricSpec, kind: str, labels: dict[str, str]) -> None:
        if spec.kind != kind:
            raise TypeError(f"{spec.name} is a {spec.kind}, not a {kind}")
        if set(labels) != set(spec.labels):
            raise ValueError(f"{spec.name} takes labels {sorted(spec.labels)}, got {sorted(labels)}")

    def _triton_metric(self, name: str, description: str, kind: str, labels: dict[str, str], **options):
        if self._pb is None:
            return None
        if name not in self._families:
            self._families[name] = self._pb.MetricFamily(name=name, description=description,
                                                         kind=getattr(self._pb.MetricFamily, kind))
        return self._families[name].Metric(labels={k: str(v) for k, v in labels.items()}, **options)
