"""Triton model configurations rendered from the serving graph: each config is built as Triton's ModelConfig
protobuf message (the schema shipped in tritonclient), printed with text_format, and parsed back to check it.

The ensemble's wiring comes from the graph: a step input is bound to the ensemble tensor of the same name
(an ensemble input or an earlier step's output), and a step output is mapped when something consumes it.

Two renderings of the one graph (`TARGETS`):
  cpu  every step a python-backend model (KIND_CPU) running its ONNX graphs in ONNX Runtime in the stub;
  gpu  the same python steps and ensemble, plus one native model per ONNX graph (`serving.gpu_graph`) on
       Triton's onnxruntime backend, KIND_GPU, TensorRT execution provider (CUDA EP as fallback), warmed up
       at the smallest and largest shapes it serves; or a TensorRT plan on the tensorrt backend where
       `exporters.tensorrt_export` built one. The owning step's config names its native models (parameter
       `onnx_models`), and `serving.ort.session` then answers with a BLS session instead of ONNX Runtime.

    python -m serving.configs --target gpu --from-repository model_repository --out model_repository_gpu
        [--plans DIR]   (DIR/<model>/1/model.plan from exporters.tensorrt_export)
renders a built repository again: copies it, rewrites every config and adds the native models.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from serving.contract import ServingLimits
from serving import gpu_graph
from serving.graph import ENSEMBLES, SERVED_STEPS, Ensemble, Step, Tensor
from serving.ort import ONNX_MODELS_PARAMETER

CPU, GPU = "cpu", "gpu"
TARGETS = (CPU, GPU)
# The TensorRT execution provider's settings in the gpu rendering (keys of Triton's onnxruntime backend).
# Engines are cached under /tmp (writable in the pod: an emptyDir), so a reload by the watchdog reuses them.
TENSORRT_PARAMETERS = {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30),
                       "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp"}


def _add_tensor(field, tensor: Tensor, limits: ServingLimits, is_input: bool) -> None:
    message = field.add(name=tensor.name, data_type=pb.DataType.Value(f"TYPE_{tensor.dtype}"),
                        dims=tensor.shape(limits))
    if is_input and tensor.optional:
        message.optional = True


def _publish(config: pb.ModelConfig, published: tuple[tuple[str, str], ...], limits: ServingLimits) -> None:
    """Limits published for clients as ModelConfig parameters (values are strings by Triton's schema: an int
    as its digits, a list as JSON)."""
    for key, field in published:
        value = getattr(limits, field)
        config.parameters[key].string_value = json.dumps(list(value)) if isinstance(value, tuple) else str(value)


def _queue(config: pb.ModelConfig, queue_delay_us: int) -> None:
    """Dynamic batching with no queue policy. A policy (a queue timeout or size bound) turns off tritonserver's
    payload prefetching, and its batcher then waits for the instance to ask for work: when the instance's last
    batch completes, the batcher is woken before the instance is back waiting, finds none waiting and sleeps its
    fixed 500 ms (core's dynamic_batch_scheduler.cc: WaitForPayloadSlotAvailable, default_wait_microseconds).
    Measured: score_ads at concurrency 1, 8-15 waits of ~520 ms in 3000 requests with the policy, none without
    (docs/results/queue_policy.md). Overload is shed in front instead: nginx bounds the requests in flight
    (serving/proxy.py), which bounds every step's queue as well."""
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us


def step_config(step: Step, limits: ServingLimits, target: str = CPU) -> pb.ModelConfig:
    config = pb.ModelConfig(name=step.name, backend="python", max_batch_size=step.batching.max_batch(limits))
    for tensor in step.inputs:
        _add_tensor(config.input, tensor, limits, is_input=True)
    if not step.batching.rows_are_batch:
        # Requests of different history lengths batch together. Without this tritonserver batches only requests
        # whose variable-length inputs have equal shapes (under load: smaller batches, more executions). A python step
        # reads every request's own tensors, so nothing is padded or concatenated. Side by side (medians of 3
        # rounds, docs/results/ragged_batch.md), recommend at 16 clients: 302 -> 425 req/s, p99 84 -> 62 ms.
        for message in config.input:
            message.allow_ragged_batch = -1 in message.dims
    for tensor in step.outputs:
        _add_tensor(config.output, tensor, limits, is_input=False)
    _queue(config, step.batching.queue_delay_us)
    config.instance_group.add(count=step.batching.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    config.parameters["limits"].string_value = limits.to_json()  # the scaffold reads every limit from here
    natives = gpu_graph.models_of(step) if target == GPU else ()
    if natives:  # serving.ort.session reads this: ONNX file -> the native model that serves it (BLS)
        config.parameters[ONNX_MODELS_PARAMETER].string_value = json.dumps({m.file: m.name for m in natives})
    _publish(config, step.published, limits)
    return config


def native_config(model: gpu_graph.NativeModel, io: gpu_graph.NativeIO, sizes: gpu_graph.Sizes,
                  limits: ServingLimits, plan: bool = False) -> pb.ModelConfig:
    """A native model of the gpu rendering: onnxruntime backend (TensorRT EP where the model converts, CUDA EP
    otherwise) or, with `plan`, the tensorrt backend; KIND_GPU; tensors as in the ONNX file; dynamic batching
    when every tensor's axis 0 is the batch; warmed up at the smallest and the largest shapes."""
    max_batch = sizes.range(model, "batch")[1] if io.batched else 0
    config = pb.ModelConfig(name=model.name, max_batch_size=max_batch)
    if plan:
        config.platform = "tensorrt_plan"
        config.default_model_filename = gpu_graph.PLAN_FILE
    else:
        config.backend = "onnxruntime"
        config.default_model_filename = gpu_graph.NATIVE_FILE
    skip = 1 if io.batched else 0

    def dims(tensor: gpu_graph.NativeTensor) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in tensor.shape[skip:]]

    for field, tensors in ((config.input, io.inputs), (config.output, io.outputs)):
        for tensor in tensors:
            field.add(name=tensor.name, data_type=pb.DataType.Value(f"TYPE_{tensor.dtype}"), dims=dims(tensor))
    if io.batched:
        _queue(config, 100)
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_GPU)
    if model.tensorrt and not plan:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        for key, value in TENSORRT_PARAMETERS.items():
            accelerator.parameters[key] = value
    # Warmup: TensorRT builds its engine for the shapes it has seen, so the two extremes make one engine cover
    # every shape a request sends, before the model reports READY.
    for which, label in ((0, "smallest"), (1, "largest")):
        warmup = config.model_warmup.add(name=f"{label} shapes", batch_size=1)
        if io.batched:
            warmup.batch_size = sizes.range(model, "batch")[which]
        for tensor in io.inputs:
            entry = warmup.inputs[tensor.name]
            entry.data_type = pb.DataType.Value(f"TYPE_{tensor.dtype}")
            entry.dims.extend(sizes.shape(model, tensor, which)[skip:])
            # Zeros: 0 is a valid id (padding) for every integer input, and an all-zero mask is a valid one
            # (random floats are not: the GRACE encoder's `valid` is 0/1 and a fractional one can divide by 0).
            entry.zero_data = True
    return config


def ensemble_config(ensemble: Ensemble, limits: ServingLimits) -> pb.ModelConfig:
    config = pb.ModelConfig(name=ensemble.name, platform="ensemble", max_batch_size=ensemble.max_batch_size)
    for tensor in ensemble.inputs:
        _add_tensor(config.input, tensor, limits, is_input=True)
    for tensor in ensemble.outputs:
        _add_tensor(config.output, tensor, limits, is_input=False)
    consumed = {t.name for step in ensemble.steps for t in step.inputs} | {t.name for t in ensemble.outputs}
    for step in ensemble.steps:
        entry = config.ensemble_scheduling.step.add(model_name=step.name, model_version=-1)
        for tensor in step.inputs:
            entry.input_map[tensor.name] = tensor.name
        for tensor in step.outputs:
            if tensor.name in consumed:
                entry.output_map[tensor.name] = tensor.name
    _publish(config, ensemble.published, limits)
    return config


def render_configs(limits: ServingLimits, skip=(), target: str = CPU, repository: Path | None = None,
                   plans=()) -> dict[str, str]:
    """Model name -> config.pbtxt text, every one parsed back against the schema; `skip`: steps not built.
    The gpu target reads its native models' tensors from the ONNX files in the built `repository`; `plans`:
    the native models served as TensorRT plans instead."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {TARGETS}")
    messages = [step_config(step, limits, target) for step in SERVED_STEPS if step.name not in skip]
    messages += [ensemble_config(ensemble, limits) for ensemble in ENSEMBLES]
    if target == GPU:
        if repository is None:
            raise ValueError("the gpu rendering reads the ONNX files' tensors: pass the built repository")
        sizes = gpu_graph.Sizes(limits, gpu_graph.facts(repository))
        for model in gpu_graph.NATIVE_MODELS:
            if model.step.name not in skip:
                io = gpu_graph.read_io(gpu_graph.onnx_path(repository, model))
                messages.append(native_config(model, io, sizes, limits, plan=model.name in plans))
    configs = {m.name: text_format.MessageToString(m) for m in messages}
    for text in configs.values():
        validate(text)
    return configs


def validate(text: str) -> pb.ModelConfig:
    """Parses with Triton's schema: unknown fields or bad enum values raise ParseError."""
    return text_format.Parse(text, pb.ModelConfig())


def write_configs(repository: Path, limits: ServingLimits, skip=()) -> None:
    for name, text in render_configs(limits, skip).items():
        model_dir = repository / name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs an (empty) version folder
        (model_dir / "config.pbtxt").write_text(text)


def repository_limits(repository: Path) -> tuple[ServingLimits, tuple[str, ...]]:
    """A built repository's serving limits (from its steps' configs) and the steps it does not have."""
    skip = tuple(step.name for step in SERVED_STEPS if not (Path(repository) / step.name / "config.pbtxt").exists())
    built = next(step for step in SERVED_STEPS if step.name not in skip)
    config = validate((Path(repository) / built.name / "config.pbtxt").read_text())
    return ServingLimits.from_json(config.parameters["limits"].string_value), skip


def render_repository(source: Path, out: Path, target: str, plans: Path | None = None) -> dict[str, str]:
    """Copies the built repository `source` to `out` and renders it for `target`: every config rewritten, and
    for the gpu target one native model folder per ONNX graph (the file copied as model.onnx, or the plan
    found at `plans`/<model>/1/model.plan). Returns the configs written."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError("--out must differ from --from-repository (the source stays the cpu rendering)")
    limits, skip = repository_limits(source)
    found = {}  # native model -> its TensorRT plan, where one was built (and the model converts)
    if plans is not None and target == GPU:
        for model in gpu_graph.NATIVE_MODELS:
            path = Path(plans) / model.name / "1" / gpu_graph.PLAN_FILE
            if model.tensorrt and path.exists():
                found[model.name] = path
    configs = render_configs(limits, skip, target, source, plans=tuple(found))
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    for model in gpu_graph.NATIVE_MODELS:  # a gpu rendering's native models never linger in a cpu one
        if target == CPU and (out / model.name).exists():
            shutil.rmtree(out / model.name)
    for name, text in configs.items():
        (out / name / "1").mkdir(parents=True, exist_ok=True)
        (out / name / "config.pbtxt").write_text(text)
    for model in gpu_graph.NATIVE_MODELS:
        if target != GPU or model.step.name in skip:
            continue
        version = out / model.name / "1"
        for stale in (gpu_graph.NATIVE_FILE, gpu_graph.PLAN_FILE):
            (version / stale).unlink(missing_ok=True)
        if model.name in found:
            shutil.copyfile(found[model.name], version / gpu_graph.PLAN_FILE)
        else:
            shutil.copyfile(gpu_graph.onnx_path(source, model), version / gpu_graph.NATIVE_FILE)
    return configs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Render a built model repository's Triton configs for a target "
                                            "(cpu: python steps with ONNX Runtime; gpu: plus native GPU models)")
    p.add_argument("--target", choices=TARGETS, required=True)
    p.add_argument("--from-repository", type=Path, required=True, help="a built repository (exporters.build_repository)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plans", type=Path, help="TensorRT plans from exporters.tensorrt_export (<model>/1/model.plan)")
    a = p.parse_args(argv)
    configs = render_repository(a.from_repository, a.out, a.target, a.plans)
    for name in sorted(configs):
        config = validate(configs[name])
        kind = ("ensemble" if config.platform == "ensemble" else config.backend or config.platform)
        devices = ",".join(pb.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group)
        print(f"{name:20s} {kind:14s} {devices}")
    print(f"{a.target} rendering of {a.from_repository} written to {a.out}")


if __name__ == "__main__":
    main()
