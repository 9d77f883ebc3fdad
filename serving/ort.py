"""The ONNX sessions of the served steps: ONNX Runtime on the CPU inside the python stub (the cpu rendering), or,
when the step's config names a native model for the file (the gpu rendering, `serving.configs`), a BLS session
that sends the same feeds to that Triton model (onnxruntime backend on the GPU, or a TensorRT plan).

Both answer `run(output_names, feeds)` and `get_inputs()` / `get_outputs()` like `onnxruntime.InferenceSession`,
so the steps' code (serving/grace, serving/clip, serving/ranking) is one code path for both renderings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

# The step config parameter of the gpu rendering: JSON {ONNX file name: native Triton model name}.
ONNX_MODELS_PARAMETER = "onnx_models"
CONFIG_FILE = "config.pbtxt"


def session(path: Path, threads: int = 1):
    """The session for an ONNX file in a step's version folder: a BLS session when the step's config.pbtxt
    (next to the version folder) maps the file to a native model, else a CPU ONNX Runtime session with one
    intra-op thread, because Triton runs several models side by side on few cores."""
    path = Path(path)
    native = native_model(path)
    if native is not None:
        return BlsSession(native, path.parent.parent.parent / native / CONFIG_FILE)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def fixed_width(session) -> int | None:
    """The history width the session's first input fixes (an older export), or None where it is dynamic (a
    name in ONNX Runtime, -1 in a native model's config)."""
    width = session.get_inputs()[0].shape[1]
    return width if isinstance(width, int) and width > 0 else None


def first_real_column(items: np.ndarray) -> int:
    """The first column of right-aligned [B, L] histories (0 = padding) that holds an event in some row (the
    last column when none does: a model still gets one): the columns before it are padding in every row, and
    leaving them out changes no real event's state in a model with a dynamic width."""
    real = np.flatnonzero((items != 0).any(axis=0))
    return min(int(real[0]), items.shape[1] - 1) if len(real) else items.shape[1] - 1


def _parse_config(path: Path):
    from serving.configs import validate  # here, not at import: serving.configs imports this module's users

    return validate(path.read_text())


def native_model(path: Path) -> str | None:
    """The native model that serves the ONNX file at `<repository>/<step>/<version>/<file>`, when the step's
    config says so (only the gpu rendering does); None in the cpu rendering and outside a repository."""
    config_file = Path(path).parent.parent / CONFIG_FILE
    if not config_file.is_file() or ONNX_MODELS_PARAMETER not in config_file.read_text():
        return None  # the cpu rendering: no config parsing, no protobuf import in the stub
    parameters = _parse_config(config_file).parameters
    if ONNX_MODELS_PARAMETER not in parameters:
        return None
    mapping = json.loads(parameters[ONNX_MODELS_PARAMETER].string_value)
    if Path(path).name not in mapping:
        raise RuntimeError(f"{config_file}: {ONNX_MODELS_PARAMETER} maps {sorted(mapping)}, not {Path(path).name}")
    return mapping[Path(path).name]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What `onnxruntime.NodeArg` tells the steps: the name and the shape (-1 where dynamic)."""

    name: str
    shape: tuple[int, ...]
    type: str


class BlsSession:
    """Runs a native Triton model through BLS (`pb_utils.InferenceRequest(...).exec()`) from inside a python
    step. The tensors are read from the native model's config.pbtxt at load (BLS cannot be called before
    `execute`); `run` is the only call that reaches the server. Outputs are asked for in CPU memory."""

    def __init__(self, model_name: str, config_file: Path, pb_utils=None):
        self.model_name = model_name
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"{config_file} missing: the gpu rendering serves {model_name} from there; "
                                    "render the repository again (python -m serving.configs --target gpu)")
        config = _parse_config(Path(config_file))
        if config.name != model_name:
            raise RuntimeError(f"{config_file} configures {config.name}, not {model_name}")
        batch = (-1,) if config.max_batch_size > 0 else ()  # what ONNX Runtime reports: the batch dim included
        self._inputs = tuple(TensorInfo(t.name, batch + tuple(t.dims), _type_name(t.data_type)) for t in config.input)
        self._outputs = tuple(TensorInfo(t.name, batch + tuple(t.dims), _type_name(t.data_type))
                              for t in config.output)
        self.max_batch_size = config.max_batch_size
        self._pb = pb_utils

    @property
    def pb(self):
        if self._pb is None:
            import triton_python_backend_utils as pb_utils  # only importable inside the python stub

            self._pb = pb_utils
        return self._pb

    def get_inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    def get_outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    def run(self, output_names, feeds: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        pb = self.pb
        names = list(output_names) if output_names else [t.name for t in self._outputs]
        inputs = [pb.Tensor(name, np.ascontiguousarray(value)) for name, value in feeds.items()]
        kwargs = {}
        if hasattr(pb, "PreferredMemory"):  # outputs of a GPU model come back in host memory (as_numpy)
            kwargs["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
        request = pb.InferenceRequest(model_name=self.model_name, requested_output_names=names, inputs=inputs,
                                      **kwargs)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.model_name}: {response.error().message()}")
        outputs = []
        for name in names:
            tensor = pb.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise RuntimeError(f"{self.model_name} answered without output {name}")
            outputs.append(tensor.as_numpy())
        return outputs


def _type_name(data_type: int) -> str:
    from tritonclient.grpc import model_config_pb2 as pb

    return pb.DataType.Name(data_type).removeprefix("TYPE_")
