"""Build TensorRT engines from a built repository's ONNX graphs and check them against ONNX Runtime on the CPU.

Needs an NVIDIA GPU and TensorRT: the `tensorrt` Python package (preferred; the parity run moves tensors with
torch's CUDA allocator) or `trtexec` on PATH (e.g. inside nvcr.io/nvidia/tritonserver:24.10-py3 or
nvcr.io/nvidia/tensorrt:24.10-py3). On such a machine, from the repository root:

    python -m exporters.tensorrt_export --repository model_repository --out trt_plans --fp16
    python -m serving.configs --target gpu --from-repository model_repository --out model_repository_gpu \
        --plans trt_plans

The first writes `<out>/<model>/1/model.plan` for every native model of the gpu rendering that converts
(`serving.gpu_graph.NATIVE_MODELS`; the others are listed with the reason) and `<out>/tensorrt_parity.json`:
the max |TensorRT - ONNX Runtime CPU| per model over random valid inputs at the smallest and the largest
shapes of its optimisation profile (the same range the gpu rendering warms up). It exits 1 when a model's
diff exceeds the tolerance (1e-3, or 5e-2 with --fp16). The second serves those plans on Triton's tensorrt
backend instead of the onnxruntime backend. An engine is only valid on the GPU model and TensorRT version
that built it: build on the serving machine type (or let the gpu rendering's TensorRT execution provider
build and cache engines at load, which needs no plan).

Not run on the development machines (no GPU there): tests/exporters/test_tensorrt_export.py checks the
CPU-side parts (arguments, which models convert, profiles, inputs, the parity measure on ONNX Runtime vs
ONNX Runtime) and skips the engine build, naming this command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from serving import gpu_graph
from serving.configs import repository_limits
from serving.gpu_graph import NativeIO, NativeModel, Sizes

FP32_TOLERANCE, FP16_TOLERANCE = 1e-3, 5e-2
WORKSPACE_BYTES = 1 << 30
PARITY_FILE = "tensorrt_parity.json"
COMMAND = ("python -m exporters.tensorrt_export --repository model_repository --out trt_plans --fp16  "
           "(on a machine with an NVIDIA GPU and the tensorrt Python package or trtexec)")


class TensorRTUnavailable(RuntimeError):
    """No GPU, or neither the tensorrt package nor trtexec."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Build TensorRT engines from a built repository's ONNX graphs and "
                                            "check them against ONNX Runtime (CPU).")
    p.add_argument("--repository", type=Path, required=True, help="a built repository (exporters.build_repository)")
    p.add_argument("--out", type=Path, required=True, help="writes <out>/<model>/1/model.plan and " + PARITY_FILE)
    p.add_argument("--models", nargs="+", choices=[m.name for m in gpu_graph.NATIVE_MODELS],
                   help="native models to convert (default: every one that converts)")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels (as the gpu rendering's TensorRT EP)")
    p.add_argument("--builder", choices=("auto", "python", "trtexec"), default="auto",
                   help="the tensorrt Python package, trtexec, or whichever is there (python first)")
    p.add_argument("--tolerance", type=float, help=f"max |diff| allowed (default {FP32_TOLERANCE}, "
                                                  f"{FP16_TOLERANCE} with --fp16)")
    p.add_argument("--workspace-bytes", type=int, default=WORKSPACE_BYTES)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.tolerance is None:
        a.tolerance = FP16_TOLERANCE if a.fp16 else FP32_TOLERANCE
    return a


def select_models(names=None) -> tuple[list[NativeModel], dict[str, str]]:
    """The native models to convert, and those that do not convert with the reason."""
    wanted = [m for m in gpu_graph.NATIVE_MODELS if names is None or m.name in names]
    return [m for m in wanted if m.tensorrt], {m.name: m.why_not_tensorrt for m in wanted if not m.tensorrt}


def profile(model: NativeModel, io: NativeIO, sizes: Sizes) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """Input -> (min, opt, max) shapes, batch dim included: the range the gpu rendering serves and warms up
    (opt = max: the engine is tuned for full batches)."""
    out = {}
    for tensor in io.inputs:
        low, high = sizes.shape(model, tensor, 0), sizes.shape(model, tensor, 1)
        out[tensor.name] = (low, high, high)
    return out


NUMPY_DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8,
                "BOOL": np.bool_}


def sample_feeds(model: NativeModel, io: NativeIO, sizes: Sizes, which: int, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    """Random inputs at the smallest (which=0) or largest (1) profile shape: integers in the range the model
    declares for the input (ids it can look up; a float mask's 0..1), other integers 0..1, floats in [0, 1)."""
    feeds = {}
    for tensor in io.inputs:
        shape = sizes.shape(model, tensor, which)
        dtype = NUMPY_DTYPES[tensor.dtype]
        if np.issubdtype(dtype, np.floating) and tensor.name not in model.values:
            feeds[tensor.name] = rng.random(shape).astype(dtype)
        else:  # integers, or a float input with declared values (a 0/1 mask)
            low, high = (sizes(v) for v in model.values.get(tensor.name, (0, 1)))
            feeds[tensor.name] = rng.integers(low, high + 1, size=shape).astype(dtype)
    return feeds


def ort_runner(path: Path, optimize: bool = True):
    """feeds -> outputs (in the file's order) with ONNX Runtime on the CPU, the reference."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)


def max_abs_diff(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} outputs, the reference has {len(reference)}")
    worst = 0.0
    for want, got in zip(reference, candidate):
        want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
        if want.shape != got.shape:
            raise ValueError(f"output shape {got.shape}, the reference's is {want.shape}")
        if want.size:
            worst = max(worst, float(np.abs(want - got).max()))
    return worst


def parity(reference, candidate, feeds: list[dict[str, np.ndarray]]) -> float:
    """The max |candidate - reference| over every output of every feed."""
    return max(max_abs_diff(reference(f), candidate(f)) for f in feeds)


# --- builders ---------------------------------------------------------------------------------------------
def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0


def tensorrt_module():
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def choose_builder(kind: str = "auto") -> "Builder":
    if not gpu_present():
        raise TensorRTUnavailable(f"no NVIDIA GPU here (nvidia-smi -L fails or is missing); run: {COMMAND}")
    trt = tensorrt_module() if kind in ("auto", "python") else None
    if trt is not None:
        return PythonBuilder(trt)
    trtexec = shutil.which("trtexec") if kind in ("auto", "trtexec") else None
    if trtexec is not None:
        return TrtexecBuilder(trtexec)
    raise TensorRTUnavailable(f"neither the tensorrt Python package nor trtexec is installed ({kind}); run: {COMMAND}")


@dataclasses.dataclass
class Builder:
    def build(self, onnx_file: Path, plan_file: Path, shapes: dict, fp16: bool, workspace: int) -> None:
        raise NotImplementedError

    def runner(self, plan_file: Path, output_names: list[str]):
        raise NotImplementedError


@dataclasses.dataclass
class PythonBuilder(Builder):
    trt: object

    def build(self, onnx_file, plan_file, shapes, fp16, workspace):
        trt = self.trt
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(
            trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(Path(onnx_file).read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{onnx_file.name}: TensorRT's ONNX parser failed: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        prof = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            prof.set_shape(name, low, opt, high)
        config.add_optimization_profile(prof)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"{onnx_file.name}: TensorRT could not build an engine (see its log above)")
        plan_file.write_bytes(bytes(plan))

    def runner(self, plan_file, output_names):
        import torch  # the CUDA allocator for the engine's device buffers (a build dependency)

        trt = self.trt
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_file.read_bytes())
        context = engine.create_execution_context()

        def run(feeds):
            keep = []
            for name, value in feeds.items():
                tensor = torch.from_numpy(np.ascontiguousarray(value)).cuda()
                keep.append(tensor)
                context.set_input_shape(name, tuple(value.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            outputs = []
            for name in output_names:
                dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
                tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
                context.set_tensor_address(name, tensor.data_ptr())
                outputs.append(tensor)
            stream = torch.cuda.current_stream()
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{plan_file}: execution failed")
            stream.synchronize()
            return [t.cpu().numpy() for t in outputs]

        return run


@dataclasses.dataclass
class TrtexecBuilder(Builder):
    trtexec: str

    @staticmethod
    def _shapes(shapes: dict[str, list[int]]) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())

    def build(self, onnx_file, plan_file, shapes, fp16, workspace):
        cmd = [self.trtexec, f"--onnx={onnx_file}", f"--saveEngine={plan_file}",
               "--minShapes=" + self._shapes({n: s[0] for n, s in shapes.items()}),
               "--optShapes=" + self._shapes({n: s[1] for n, s in shapes.items()}),
               "--maxShapes=" + self._shapes({n: s[2] for n, s in shapes.items()}),
               f"--memPoolSize=workspace:{max(workspace >> 20, 1)}M", "--skipInference"]
        if fp16:
            cmd.append("--fp16")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")

    def runner(self, plan_file, output_names):
        def run(feeds):
            with tempfile.TemporaryDirectory() as tmp:
                files = []
                for i, (name, value) in enumerate(feeds.items()):
                    path = Path(tmp) / f"input{i}.bin"
                    np.ascontiguousarray(value).tofile(path)
                    files.append(f"{name}:{path}")
                out = Path(tmp) / "outputs.json"
                cmd = [self.trtexec, f"--loadEngine={plan_file}",
                       "--shapes=" + self._shapes({n: list(v.shape) for n, v in feeds.items()}),
                       "--loadInputs=" + ",".join(files), f"--exportOutput={out}", "--iterations=1", "--warmUp=0",
                       "--duration=0"]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
                exported = {o["name"]: o for o in json.loads(out.read_text())}
            return [np.asarray(exported[n]["values"], np.float64).reshape(
                [int(d) for d in str(exported[n]["dimensions"]).split("x")]) for n in output_names]

        return run


# --- the command ------------------------------------------------------------------------------------------
def export(repository: Path, out: Path, builder: Builder, names=None, fp16: bool = False,
           workspace: int = WORKSPACE_BYTES, seed: int = 0) -> dict:
    """Builds every selected model's plan and measures its parity; returns the report written to PARITY_FILE."""
    limits, _ = repository_limits(repository)
    sizes = Sizes(limits, gpu_graph.facts(repository))
    convert, skipped = select_models(names)
    rng = np.random.default_rng(seed)
    report = {"fp16": fp16, "builder": type(builder).__name__, "models": {}, "not_converted": skipped}
    for model in convert:
        onnx_file = gpu_graph.onnx_path(repository, model)
        io = gpu_graph.read_io(onnx_file)
        shapes = profile(model, io, sizes)
        plan = Path(out) / model.name / "1" / gpu_graph.PLAN_FILE
        plan.parent.mkdir(parents=True, exist_ok=True)
        builder.build(onnx_file, plan, shapes, fp16, workspace)
        feeds = [sample_feeds(model, io, sizes, which, rng) for which in (0, 1)]
        diff = parity(ort_runner(onnx_file), builder.runner(plan, [t.name for t in io.outputs]), feeds)
        report["models"][model.name] = {"plan": str(plan), "max_abs_diff": diff, "profile": shapes}
        print(f"{model.name:20s} max |TensorRT - ONNX Runtime| = {diff:.3e}", flush=True)
    for name, why in skipped.items():
        print(f"{name:20s} not converted: {why}")
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / PARITY_FILE).write_text(json.dumps(report, indent=2))
    return report


def main(argv=None) -> None:
    a = parse_args(argv)
    try:
        builder = choose_builder(a.builder)
    except TensorRTUnavailable as err:
        raise SystemExit(str(err)) from None
    report = export(a.repository, a.out, builder, a.models, a.fp16, a.workspace_bytes, a.seed)
    worse = {n: r["max_abs_diff"] for n, r in report["models"].items() if r["max_abs_diff"] > a.tolerance}
    if worse:
        print(f"parity above {a.tolerance}: {worse}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
