"""The python-backend scaffold every served step shares (runs inside Triton's python stub, and in process).

A step class names its `serving.graph.Step`; the scaffold reads the step's inputs and outputs from the graph,
so a step's code only says what it computes: `load()` reads its artifacts once, `run(**inputs)` maps one
request's input arrays (named by the graph, batch dimension removed) to its outputs in graph order.
`run_batch` may be overridden to process all queued requests in one go (the ranker does).

A bad request gets INVALID_ARGUMENT naming the field and the limit while the rest of the batch is served; a
bug gets INTERNAL and the server keeps serving.

Observability: every step counts its batch sizes, its rejected requests (by field) and its internal errors here
(serving.metrics; no-ops in process), and logs through `self.log`: Triton's log (pb_utils.Logger) when served, the `logging`
logger `serving.steps.<step>` otherwise.
"""

from __future__ import annotations

import inspect
import json
import logging
import traceback
import uuid
from pathlib import Path

import numpy as np

from serving import metrics
from serving.contract import RequestError, ServingLimits
from serving.graph import Step


class InternalError(RuntimeError):
    """What a client sees of a bug: an id to quote, never a traceback or a path."""

    def __init__(self, incident: str):
        super().__init__(f"internal error {incident}; the server log has the details")


class StepLog:
    """A step's logger: Triton's (pb_utils.Logger, into the server log) inside the python stub, the standard
    `logging` logger `serving.steps.<step>` elsewhere."""

    def __init__(self, step: str, pb_utils=None):
        self.step, self._pb = step, pb_utils
        self._logger = logging.getLogger(f"serving.steps.{step}")

    def _log(self, level: int, pb_name: str, message: str) -> None:
        if self._pb is not None:
            getattr(self._pb.Logger, pb_name)(f"{self.step}: {message}")
        else:
            self._logger.log(level, message)

    def info(self, message: str) -> None:
        self._log(logging.INFO, "log_info", message)

    def warning(self, message: str) -> None:
        self._log(logging.WARNING, "log_warn", message)

    def error(self, message: str) -> None:
        self._log(logging.ERROR, "log_error", message)


class StepModel:
    STEP: Step
    pb = None  # triton_python_backend_utils, inside Triton only

    # --- in process (the reference pipeline, tests) and in Triton alike ---------------------------------
    @classmethod
    def create(cls, version_dir: Path, limits: ServingLimits) -> "StepModel":
        """The step outside Triton, reading the same artifacts."""
        model = cls()
        model.setup(Path(version_dir), limits)
        return model

    def setup(self, version_dir: Path, limits: ServingLimits, registry: metrics.Metrics | None = None) -> None:
        """`registry`: where the step's metrics go (None: nowhere, as in process). The metrics are created here,
        once per model instance, before `load()` so that a step's `load` can create its own."""
        self.version_dir, self.limits = version_dir, limits
        self.metrics = registry if registry is not None else metrics.Metrics(None)
        self.log = StepLog(self.STEP.name, self.pb)
        self.batch_size = self.metrics.histogram(metrics.BATCH_SIZE, model=self.STEP.name)
        # Every input's series exists from the start (reads 0); other fields a step names appear when first used.
        self.rejected = self.metrics.counters(metrics.REJECTED_REQUESTS, "field", [t.name for t in self.STEP.inputs],
                                              model=self.STEP.name)
        self.internal_errors = self.metrics.counter(metrics.INTERNAL_ERRORS, model=self.STEP.name)
        check_signature(type(self))
        self.load()

    def count_rejection(self, err: RequestError) -> None:
        field = err.field
        if field not in self.rejected:
            self.rejected[field] = self.metrics.counter(metrics.REJECTED_REQUESTS, model=self.STEP.name, field=field)
        self.rejected[field].add()

    def load(self) -> None:
        """Reads the step's artifacts from self.version_dir."""

    def run(self, **inputs: np.ndarray) -> tuple:  # pragma: no cover - overridden
        raise NotImplementedError

    def run_batch(self, batch: list[dict[str, np.ndarray]]) -> list[tuple]:
        return [self.run(**inputs) for inputs in batch]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """One request in process: inputs and outputs named by the graph, checked as when served."""
        self.check_inputs(inputs)
        return self.name_outputs(self.run(**inputs))

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """What the graph declares a request may send: value ranges, lengths, finite floats. Every step runs
        this, so a step called directly (any client can) refuses what its neighbours would never send."""
        for tensor in self.STEP.inputs:
            value = inputs.get(tensor.name)
            if value is None or not isinstance(value, np.ndarray):
                continue
            limit = tensor.length_limit(self.limits)
            if limit is not None and value.ndim >= 1 and value.shape[0] > limit:
                raise RequestError(tensor.name, f"has {value.shape[0]} values; the maximum is {limit}")
            bounds = tensor.value_range(self.limits)
            if bounds is not None and value.size:
                if value.dtype.kind not in "iu":
                    raise RequestError(tensor.name, f"expected an integer tensor, got dtype {value.dtype}")
                low, high = bounds
                bad = value[(value < low) | (value > high)]
                if len(bad):
                    raise RequestError(tensor.name,
                                       f"value {int(bad[0])} is out of range; valid range is {low}..{high}")
            if tensor.dtype == "FP32" and value.dtype.kind == "f" and not np.isfinite(value).all():
                raise RequestError(tensor.name, "values must be finite (no NaN or infinity)")

    def name_outputs(self, result: tuple) -> dict[str, np.ndarray]:
        outputs = self.STEP.outputs
        if len(result) != len(outputs):
            raise RuntimeError(f"{self.STEP.name} returned {len(result)} outputs; the graph declares {len(outputs)}")
        return {tensor.name: np.asarray(value) for tensor, value in zip(outputs, result)}

    # --- Triton's python backend ------------------------------------------------------------------------
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only importable inside the stub

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        check_config(self.STEP, config)
        limits = ServingLimits.from_json(config["parameters"]["limits"]["string_value"])
        self.setup(Path(args["model_repository"]) / args["model_version"], limits, metrics.Metrics(pb_utils))
        self.metrics.start()  # sent every few seconds by a thread, never from execute (serving.metrics)

    def finalize(self) -> None:
        self.metrics.close()

    def read_request(self, request) -> dict[str, np.ndarray]:
        inputs = {}
        for tensor in self.STEP.inputs:
            value = self.pb.get_input_tensor_by_name(request, tensor.name)
            if value is None:
                if not tensor.optional:
                    raise RequestError(tensor.name, "is required")
                continue
            array = value.as_numpy()
            if self.STEP.batching.rows_are_batch:
                inputs[tensor.name] = array
                continue
            if array.shape[0] != 1:
                raise RequestError(tensor.name,
                                   f"batch dimension is {array.shape[0]}; one user per request (maximum 1)")
            inputs[tensor.name] = array[0]
        return inputs

    def _error(self, message: str, code):
        return self.pb.InferenceResponse(error=self.pb.TritonError(message, code))

    def execute(self, requests):
        self.batch_size.observe(len(requests))
        return self._execute(requests)

    def _reject(self, err: RequestError):
        self.count_rejection(err)
        return self._error(str(err), self.pb.TritonError.INVALID_ARG)

    def _execute(self, requests):
        responses: list = [None] * len(requests)
        batch, slots = [], []
        for i, request in enumerate(requests):
            try:
                inputs = self.read_request(request)
                self.check_inputs(inputs)
                batch.append(inputs)
                slots.append(i)
            except RequestError as err:
                responses[i] = self._reject(err)
        try:
            results = self.run_batch(batch) if batch else []
        except RequestError:
            # One bad request must not fail its neighbours: redo them one by one.
            results = []
            for inputs in batch:
                try:
                    results.append(self.run(**inputs))
                except RequestError as err:
                    results.append(err)
        except Exception:  # a bug, not the client's fault: INTERNAL, and the server keeps serving
            # The client gets an opaque id; the server log carries it with the full traceback.
            incident = uuid.uuid4().hex[:12]
            self.log.error(f"internal error {incident}:\n{traceback.format_exc()}")
            results = [InternalError(incident)] * len(batch)
            self.internal_errors.add(len(batch))
        add_batch_dim = not self.STEP.batching.rows_are_batch
        for i, result in zip(slots, results):
            if isinstance(result, RequestError):
                responses[i] = self._reject(result)
            elif isinstance(result, Exception):
                responses[i] = self._error(str(result), self.pb.TritonError.INTERNAL)
            else:
                outputs = self.name_outputs(result)
                self._count_served(outputs)
                responses[i] = self.pb.InferenceResponse(output_tensors=[
                    self.pb.Tensor(name, value[None] if add_batch_dim else value) for name, value in outputs.items()])
        return responses

    def count_served(self, outputs: dict[str, np.ndarray]) -> None:
        """A step's metrics of one answered request (its named outputs): counted where the response is made, so
        only what a client received counts (a batch redone one by one counts each answer once)."""

    def _count_served(self, outputs: dict[str, np.ndarray]) -> None:
        try:
            self.count_served(outputs)
        except Exception:  # noqa: BLE001 - a metric must never cost a client its answer
            self.log.error(f"counting metrics failed:\n{traceback.format_exc()}")


class RepositoryMismatch(RuntimeError):
    """The model repository's config.pbtxt was rendered from another version of the serving graph."""


def _declared(tensors) -> dict[str, str]:
    return {t.name: t.dtype for t in tensors}


def _configured(entries: list[dict]) -> dict[str, str]:
    return {e["name"]: e["data_type"].removeprefix("TYPE_") for e in entries}


def check_config(step: Step, config: dict) -> None:
    """Refuses to load when the repository's config and this code disagree on the step's tensors: serving a
    stale repository would answer with outputs the ensemble does not expect (tritonserver crashes on some)."""
    for side, declared, configured in (("inputs", _declared(step.inputs), _configured(config.get("input", []))),
                                       ("outputs", _declared(step.outputs), _configured(config.get("output", [])))):
        if declared != configured:
            raise RepositoryMismatch(
                f"{step.name}: the model repository's config.pbtxt declares {side} {sorted(configured.items())} "
                f"but this code's serving graph declares {sorted(declared.items())}; the repository was built by "
                "another version of the code: rebuild it (python -m exporters.build_repository)")


def check_signature(cls: type[StepModel]) -> None:
    """`run`'s parameters are the step's input tensor names (a **kwargs catch-all may take the rest)."""
    params = inspect.signature(cls.run).parameters
    named = {n for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD}
    catch_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    declared = {t.name for t in cls.STEP.inputs}
    if named - declared or (not catch_all and declared - named):
        raise TypeError(f"{cls.__name__}.run takes {sorted(named)}; the graph declares {cls.STEP.name}'s inputs as "
                        f"{sorted(declared)}")
