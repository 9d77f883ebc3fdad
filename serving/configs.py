"""Triton model configurations rendered from the serving graph: each config is built as Triton's ModelConfig
protobuf message (the schema shipped in tritonclient), printed with text_format, and parsed back to check it.

The ensemble's wiring comes from the graph: a step input is bound to the ensemble tensor of the same name
(an ensemble input or an earlier step's output), and a step output is mapped when something consumes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from serving.contract import ServingLimits
from serving.graph import ENSEMBLES, SERVED_STEPS, Ensemble, Step, Tensor

INSTANCES_PER_STEP = 1


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


def step_config(step: Step, limits: ServingLimits) -> pb.ModelConfig:
    config = pb.ModelConfig(name=step.name, backend="python", max_batch_size=step.batching.max_batch(limits))
    for tensor in step.inputs:
        _add_tensor(config.input, tensor, limits, is_input=True)
    for tensor in step.outputs:
        _add_tensor(config.output, tensor, limits, is_input=False)
    config.dynamic_batching.max_queue_delay_microseconds = step.batching.queue_delay_us
    policy = config.dynamic_batching.default_queue_policy
    policy.timeout_action = pb.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = limits.queue_timeout_ms * 1000
    policy.allow_timeout_override = True  # a client's own (shorter) deadline applies in the queue too
    policy.max_queue_size = limits.max_queue_size
    config.instance_group.add(count=INSTANCES_PER_STEP, kind=pb.ModelInstanceGroup.KIND_CPU)
    config.parameters["limits"].string_value = limits.to_json()  # the scaffold reads every limit from here
    _publish(config, step.published, limits)
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


def render_configs(limits: ServingLimits, skip=()) -> dict[str, str]:
    """Model name -> config.pbtxt text, every one parsed back against the schema; `skip`: steps not built."""
    messages = [step_config(step, limits) for step in SERVED_STEPS if step.name not in skip]
    messages += [ensemble_config(ensemble, limits) for ensemble in ENSEMBLES]
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
