"""The GPU rendering's native models: the ONNX graphs the python steps run, served by Triton's own onnxruntime
backend on the GPU (TensorRT execution provider, CUDA EP as fallback) instead of an ONNX Runtime session inside
the python stub.

`serving.graph` stays the one source of the served graph: a native model here only names the step whose
version folder holds its ONNX file (written by the build) and says how it may be batched and warmed up. Its
tensors (names, dtypes, dims) are read from the .onnx file itself, so they cannot drift from the export. In the
GPU rendering (`serving.configs`, target "gpu") the owning step stays a python step on the CPU and reaches its
native models through BLS (`serving.ort.BlsSession`); the step's code is the same in both renderings.

A size (`sizes`, `values`) is an int or an expression `serving.graph.resolve` understands ("beam_width",
"max_history_tokens"), plus the facts of a built repository (`facts()`: the GRACE and CLIP vocabularies, the
CLIP context length).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from serving import graph
from serving.clip.embedder import IMAGE_FILE, MANIFEST_FILE as CLIP_MANIFEST_FILE, TEXT_FILE
from serving.grace.history import TOKENIZER_FILE
from serving.grace.retriever import DECODER_STEP_FILE, ENCODER_FILE, LEVEL_TOKENS
from serving.grace.tokenizer import ItemTokenizer
from serving.ranking import RANKER_FILE
from serving.sasrec import ITEMS_INPUT, SASREC_FILE

NATIVE_FILE = "model.onnx"  # the onnxruntime backend's default model file name
PLAN_FILE = "model.plan"  # the tensorrt backend's
ONNX_DTYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(int64)": "INT64",
               "tensor(int32)": "INT32", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}


@dataclasses.dataclass(frozen=True)
class NativeModel:
    name: str  # the Triton model name
    step: graph.Step  # the python step whose version folder holds the file and which calls the model
    file: str  # the ONNX file in that folder
    # Named (symbolic) ONNX dims -> (smallest, largest) a request sends: the warmup requests and the TensorRT
    # optimisation profile cover exactly this range. "batch" is the batch dim of a batchable model.
    sizes: dict[str, tuple[int | str, int | str]]
    # Inclusive value range of an input (random parity inputs must be valid ids; a float mask is 0 or 1);
    # other integer inputs: 0..1, other floats: [0, 1).
    values: dict[str, tuple[int | str, int | str]] = dataclasses.field(default_factory=dict)
    # Inputs of `values` that an export may lack: the copy path's memory_paths, a level-restricted step's tokens.
    optional: tuple[str, ...] = ()
    tensorrt: bool = True  # TensorRT (execution provider, or a plan) where it converts; else CUDA EP only
    why_not_tensorrt: str = ""


@dataclasses.dataclass(frozen=True)
class NativeTensor:
    name: str
    dtype: str  # Triton's TYPE_* name without the prefix
    shape: tuple[int | str, ...]  # as in the ONNX file: ints, or dim names (dynamic)


@dataclasses.dataclass(frozen=True)
class NativeIO:
    inputs: tuple[NativeTensor, ...]
    outputs: tuple[NativeTensor, ...]
    batched: bool  # axis 0 of every tensor is the dynamic dim "batch": Triton may batch requests together


NATIVE_MODELS = (
    # grace_retrieve encodes every queued request in one call (left-padded), so the encoder's batch is up to
    # grace_retrieve's max batch; cross_kv's batch is axis 2, so Triton itself does not batch it (max_batch_size 0).
    NativeModel("grace_encoder", graph.GRACE_RETRIEVE, ENCODER_FILE,
                # A history is whole events; with event memory cross_kv has one position per event.
                sizes={"batch": (1, "grace_max_batch"), "tokens": ("tokens_per_event", "max_history_tokens"),
                       "events": (1, "max_history")},
                values={"tokens": (0, "grace_vocab-1"), "valid": (0, 1), "journey_ids": (0, "max_history-1"),
                        "journey_pos": (0, "max_history_tokens-1")}),
    # One call advances the beams of every queued request: `requests` memories, each serving beams/requests rows.
    NativeModel("grace_decoder_step", graph.GRACE_RETRIEVE, DECODER_STEP_FILE,
                # The cache holds the decoded prefix: at most path_length-1 = tokens_per_event-2 tokens.
                # A level-restricted step scores the tokens of one path level (`level`, at most the vocabulary).
                sizes={"beams": (1, "grace_max_beams"), "requests": (1, "grace_max_batch"),
                       "past": (1, "tokens_per_event-2"),
                       "tokens": ("tokens_per_event", "max_history_tokens"), "events": (1, "max_history"),
                       "level": (1, "grace_vocab")},
                values={"last_tokens": (0, "grace_vocab-1"), "memory_paths": (0, "grace_vocab-1"),
                        LEVEL_TOKENS: (0, "grace_vocab-1")},
                optional=("memory_paths", LEVEL_TOKENS),
                tensorrt=False,
                why_not_tensorrt="its KV cache is empty (a zero-length dim) at the first step and grows every step: "
                                 "TensorRT would need a profile per length; the CUDA execution provider runs it"),
    NativeModel("ranker_onnx", graph.RANK, RANKER_FILE,
                # Histories come without their all-padding columns: 1..max_history events.
                sizes={"batch": (1, "ranker_max_batch"), "events": (1, "max_history")},
                # The exported ranker's tensors are the served step's (exporters.onnx_export.export_ranker).
                values={graph.HIST_ITEMS.name: graph.HIST_ITEMS.values, graph.HIST_BEHAVIORS.name:
                        graph.HIST_BEHAVIORS.values, graph.CAND_ITEMS.name: graph.CAND_ITEMS.values}),
    NativeModel("sasrec_onnx", graph.SIDE_RETRIEVE, SASREC_FILE, sizes={"batch": (1, "sasrec_max_batch"),
                                                                  "events": (1, "max_history")},
                values={ITEMS_INPUT: graph.HIST_ITEMS.values}),
    NativeModel("clip_image", graph.CLIP_EMBED, IMAGE_FILE, sizes={"batch": (1, "max_clip_rows")}),
    NativeModel("clip_text", graph.CLIP_EMBED, TEXT_FILE, sizes={"batch": (1, "max_clip_rows"),
                                                                  "tokens": (2, "context_length")},
                values={"input_ids": (0, "clip_vocab-1")}),
)
NATIVE = {model.name: model for model in NATIVE_MODELS}


def models_of(step: graph.Step) -> tuple[NativeModel, ...]:
    return tuple(model for model in NATIVE_MODELS if model.step.name == step.name)


def onnx_path(repository: Path, model: NativeModel) -> Path:
    """Where the build writes the model's ONNX file: the owning step's version folder."""
    return Path(repository) / model.step.name / "1" / model.file


def read_io(path: Path) -> NativeIO:
    """The ONNX file's inputs and outputs (names, dtypes, dims), read with ONNX Runtime (serving's own
    dependency)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def tensors(args) -> tuple[NativeTensor, ...]:
        out = []
        for arg in args:
            if arg.type not in ONNX_DTYPES:
                raise ValueError(f"{path.name}: tensor {arg.name} has type {arg.type}; not one of {sorted(ONNX_DTYPES)}")
            out.append(NativeTensor(arg.name, ONNX_DTYPES[arg.type],
                                    tuple(d if isinstance(d, int) else str(d) for d in arg.shape)))
        return tuple(out)

    inputs, outputs = tensors(sess.get_inputs()), tensors(sess.get_outputs())
    batched = all(t.shape and t.shape[0] == "batch" for t in inputs + outputs)
    return NativeIO(inputs, outputs, batched)


def facts(repository: Path) -> dict[str, int]:
    """Sizes a built repository decides beyond the serving limits (the models' vocabularies, CLIP's context)."""
    out = {}
    clip = Path(repository) / graph.CLIP_EMBED.name / "1" / CLIP_MANIFEST_FILE
    if clip.exists():
        manifest = json.loads(clip.read_text())
        out.update(clip_vocab=int(manifest["vocab_size"]), context_length=int(manifest["context_length"]))
    tokenizer = Path(repository) / graph.GRACE_RETRIEVE.name / "1" / TOKENIZER_FILE
    if tokenizer.exists():  # the token ids the decoder reads and scores
        out["grace_vocab"] = ItemTokenizer.load(tokenizer).vocab_size
    return out


class Sizes:
    """Resolves size expressions with the serving limits, the graph's constants and a repository's facts."""

    def __init__(self, limits, repo_facts: dict[str, int]):
        self.limits, self.facts = limits, dict(repo_facts)
        self.facts["ranker_max_batch"] = graph.RANK.batching.max_batch(limits)
        self.facts["grace_max_batch"] = graph.GRACE_RETRIEVE.batching.max_batch(limits)
        self.facts["sasrec_max_batch"] = graph.SIDE_RETRIEVE.batching.max_batch(limits)
        self.facts["grace_max_beams"] = self.facts["grace_max_batch"] * limits.beam_width
        self.facts["num_behaviors"] = limits.num_behaviors

    def __call__(self, expression: int | str) -> int:
        if isinstance(expression, int):
            return expression
        field, sign, offset = expression.partition("+") if "+" in expression else expression.partition("-")
        if field in self.facts:
            value = self.facts[field]
            return value + (int(offset) if sign == "+" else -int(offset) if sign == "-" else 0)
        return graph.resolve(expression, self.limits)

    def range(self, model: NativeModel, dim: str) -> tuple[int, int]:
        if dim not in model.sizes:
            raise KeyError(f"{model.name}: the ONNX file has a dynamic dim {dim!r} that NATIVE_MODELS does not size")
        low, high = (self(v) for v in model.sizes[dim])
        return low, high

    def shape(self, model: NativeModel, tensor: NativeTensor, which: int) -> list[int]:
        """The tensor's full shape (batch included) at the smallest (which=0) or largest (1) size."""
        return [d if isinstance(d, int) else self.range(model, d)[which] for d in tensor.shape]
