"""Shared scaffolding for the repository's python-backend models (runs inside Triton's python stub).

Config and artifacts are read once in `initialize`; each request gets its own response, and a bad request
gets INVALID_ARGUMENT naming the field and the limit while the rest of the batch is served.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.pipeline import RequestError, ServingLimits


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU ONNX Runtime session; one intra-op thread because Triton runs several models side by side on
    few cores. (Kept here, free of torch, so that serving never imports torch.)"""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class StepModel:
    """Subclasses set INPUTS / OPTIONAL_INPUTS and implement `setup()` and `run(**inputs) -> dict`.

    `run` sees one request with the batch dimension removed (requests carry one user each); `run_batch`
    may be overridden to process all queued requests in one go (the ranker does).
    """

    INPUTS: tuple[str, ...] = ()
    OPTIONAL_INPUTS: tuple[str, ...] = ()
    # False: one user per request, outputs get the batch dimension of 1 added. True: `_read` keeps the
    # request's rows and `run` returns outputs whose first dimension is already the request's rows.
    ROWS_ARE_BATCH = False

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only importable inside the stub

        self.pb = pb_utils
        self.config = json.loads(args["model_config"])
        self.version_dir = Path(args["model_repository"]) / args["model_version"]
        self.limits = ServingLimits.from_json(self.config["parameters"]["limits"]["string_value"])
        self.setup()

    def setup(self) -> None:  # pragma: no cover - overridden
        pass

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def run_batch(self, batch: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [self.run(**inputs) for inputs in batch]

    def _read(self, request) -> dict[str, np.ndarray]:
        inputs = {}
        for name in self.INPUTS + self.OPTIONAL_INPUTS:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                if name in self.INPUTS:
                    raise RequestError(name, "is required")
                continue
            array = tensor.as_numpy()
            if array.shape[0] != 1:
                raise RequestError(name, f"batch dimension is {array.shape[0]}; one user per request (maximum 1)")
            inputs[name] = array[0]
        return inputs

    def _error(self, message: str, code):
        return self.pb.InferenceResponse(error=self.pb.TritonError(message, code))

    def execute(self, requests):
        responses: list = [None] * len(requests)
        batch, slots = [], []
        for i, request in enumerate(requests):
            try:
                batch.append(self._read(request))
                slots.append(i)
            except RequestError as err:
                responses[i] = self._error(str(err), self.pb.TritonError.INVALID_ARG)
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
            message = traceback.format_exc()
            self.pb.Logger.log_error(message)
            results = [RuntimeError(message.strip().splitlines()[-1])] * len(batch)
        for i, result in zip(slots, results):
            if isinstance(result, RequestError):
                responses[i] = self._error(str(result), self.pb.TritonError.INVALID_ARG)
            elif isinstance(result, Exception):
                responses[i] = self._error(f"internal error: {result}", self.pb.TritonError.INTERNAL)
            else:
                responses[i] = self.pb.InferenceResponse(output_tensors=[
                    self.pb.Tensor(name, np.asarray(value) if self.ROWS_ARE_BATCH else np.asarray(value)[None])
                    for name, value in result.items()])
        return responses
