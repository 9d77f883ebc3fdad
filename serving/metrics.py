"""Custom Prometheus metrics of the served steps, served by tritonserver's metrics endpoint next to its own
`nv_*` metrics, through the python backend's `pb_utils.MetricFamily` / `pb_utils.Metric`.

Every metric is declared here once (name, help text, kind, label names). A step creates the ones it uses once per
model instance, when it loads (the scaffold, `serving.backend.StepModel.setup`, hands it a `Metrics`). Outside
Triton (the in-process reference, `StepModel.create`, unit tests) `triton_python_backend_utils` does not exist:
`Metrics(None)` hands out the same objects, checked the same way, whose updates go nowhere.

Updates are local and sent to Triton by a background thread every `FLUSH_INTERVAL_S`, never from `execute`. Each
update of a Triton metric is a round trip from the python stub to the server process, and the server waits for the
stub's acknowledgement without a timeout (python backend 24.10, `ProcessMessage`). A stub killed mid-update (the
OOM killer, a crash) wedges that instance's message thread, so tritonserver can no longer unload it: the
watchdog's reload hangs, and with it every model load. Sending one batch of changed series every few seconds,
instead of a few updates per execution, makes that window a negligible share of the stub's life. Histograms are
therefore counters too (`_bucket{le=...}`, `_sum`, `_count`, as Prometheus lays a histogram out): a counter can
add up many observations in one update, while the python backend's HISTOGRAM kind takes them one update each.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable

from serving import graph

COUNTER, HISTOGRAM = "counter", "histogram"
FLUSH_INTERVAL_S = 5.0  # Prometheus scrapes every 15 s (deploy/base ServiceMonitor)


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    description: str
    kind: str  # COUNTER or HISTOGRAM
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds (+Inf is implied)


RECOMMEND_ITEMS = MetricSpec(
    "recserve_recommend_items_total", "items in the served top-k (rank), by the retrieval source that found them",
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
    "recserve_grace_beam_steps_total", "GRACE decoder-step calls in grace_retrieve (ONNX Runtime runs of the cached "
    "decoder step; one per beam-search level serves every request batched together)", COUNTER)

ALL = (RECOMMEND_ITEMS, SCORE_ADS_PREDICTIONS, REJECTED_REQUESTS, INTERNAL_ERRORS, BATCH_SIZE, GRACE_BEAM_STEPS)


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


class Counter:
    """A counter child (one label set). `add` is local; `Metrics.flush` sends what was added since."""

    def __init__(self, metric=None, lock: threading.Lock | None = None):
        self._metric, self._lock = metric, lock or threading.Lock()
        self.pending, self.total = 0, 0

    def add(self, amount: int | float = 1) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up, got {amount}")
        with self._lock:
            self.pending += amount
            self.total += amount

    def take(self) -> int | float:
        """The amount added since the last take (under the registry's lock)."""
        amount, self.pending = self.pending, 0
        return amount


class Histogram:
    """A histogram child (one label set), kept as Prometheus' counters: cumulative `<name>_bucket{le}`, `_sum` and
    `_count`, so `histogram_quantile` and `rate(_sum) / rate(_count)` work on it."""

    def __init__(self, buckets: dict[float, Counter], sum_counter: Counter, count_counter: Counter):
        self._buckets, self._sum, self._count = buckets, sum_counter, count_counter

    @property
    def count(self) -> int:
        return self._count.total

    @property
    def sum(self) -> float:
        return self._sum.total

    def observe(self, value: float) -> None:
        for bound, counter in self._buckets.items():
            if value <= bound:
                counter.add(1)
        self._sum.add(value)
        self._count.add(1)


class Metrics:
    """The metric families and children of one model instance. `pb_utils`: the python backend's module (inside
    Triton), or None (a no-op registry)."""

    def __init__(self, pb_utils=None, flush_interval_s: float = FLUSH_INTERVAL_S):
        self._pb, self.flush_interval_s = pb_utils, flush_interval_s
        self._lock = threading.Lock()  # counts (execute) against takes (the flusher)
        self._families: dict[str, object] = {}
        self._counters: dict[tuple, Counter] = {}
        self._triton: dict[tuple, object] = {}  # counter key -> its pb_utils.Metric (None in process)
        self._histograms: dict[tuple, Histogram] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

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

    def counter(self, spec: MetricSpec, **labels: str) -> Counter:
        self._check(spec, COUNTER, labels)
        return self._counter(spec.name, spec.description, labels)

    def histogram(self, spec: MetricSpec, **labels: str) -> Histogram:
        self._check(spec, HISTOGRAM, labels)
        key = (spec.name, tuple(sorted(labels.items())))
        if key not in self._histograms:
            buckets = {float(b): self._counter(f"{spec.name}_bucket", spec.description, {**labels, "le": _le(b)})
                       for b in spec.buckets}
            buckets[float("inf")] = self._counter(f"{spec.name}_bucket", spec.description, {**labels, "le": "+Inf"})
            self._histograms[key] = Histogram(buckets, self._counter(f"{spec.name}_sum", spec.description, labels),
                                              self._counter(f"{spec.name}_count", spec.description, labels))
        return self._histograms[key]

    def counters(self, spec: MetricSpec, label: str, values: Iterable[str], **labels: str) -> dict[str, Counter]:
        """One counter per value of `label` (created now, so each series reads 0 before its first event)."""
        return {value: self.counter(spec, **labels, **{label: value}) for value in values}

    def start(self) -> None:
        """Starts the background flusher (inside Triton; the in-process registry sends nothing)."""
        if self.enabled and self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="recserve-metrics", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a metric must never take the step down; the next flush retries
                pass

    def flush(self) -> None:
        """Sends every counter's pending amount to Triton: one update per changed series."""
        with self._lock:
            amounts = [(key, counter.take()) for key, counter in self._counters.items()]
        for key, amount in amounts:
            metric = self._triton.get(key)
            if amount and metric is not None:
                metric.increment(float(amount))

    def close(self) -> None:
        """Stops the flusher, sends what is pending, then drops the Triton metrics before their families (the
        python backend requires that order)."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=self.flush_interval_s + 5)
        self.flush()
        self._triton.clear()
        self._families.clear()

    @staticmethod
    def _check(spec: MetricSpec, kind: str, labels: dict[str, str]) -> None:
        if spec.kind != kind:
            raise TypeError(f"{spec.name} is a {spec.kind}, not a {kind}")
        if set(labels) != set(spec.labels):
            raise ValueError(f"{spec.name} takes labels {sorted(spec.labels)}, got {sorted(labels)}")

    def _counter(self, name: str, description: str, labels: dict[str, str]) -> Counter:
        """Created by the step's own thread (initialize, execute); the flusher only reads, under the lock."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            counter = self._counters.get(key)
        if counter is not None:
            return counter
        metric = None
        if self._pb is not None:
            if name not in self._families:
                self._families[name] = self._pb.MetricFamily(name=name, description=description,
                                                             kind=self._pb.MetricFamily.COUNTER)
            metric = self._families[name].Metric(labels={k: str(v) for k, v in labels.items()})
        counter = Counter(lock=self._lock)
        with self._lock:
            self._counters[key], self._triton[key] = counter, metric
        return counter
