"""Triton model configurations of the served repository: one source of truth, rendered to config.pbtxt and
validated against Triton's ModelConfig protobuf schema (shipped in tritonclient).

The DAG `features -> {grace_retrieve, clip_retrieve} -> merge -> ranker -> calibrate` is a Triton ensemble
(its C++ scheduler runs the two retrieval steps in parallel); only grace_retrieve loops (beam search).
`clip_embed` (creative/item embeddings) and `score_ads` (campaign pCTR) are served on their own.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from models.ctr_features import MAX_HISTORY as CTR_MAX_HISTORY
from models.pipeline import ServingLimits

MAX_BATCH_SIZE = 8
QUEUE_DELAY_US = 200
# Python-backend models served by this repository, each with a committed 1/model.py.
ENSEMBLE_MODELS = ("features", "grace_retrieve", "clip_retrieve", "merge", "ranker", "calibrate")  # `recommend`
PYTHON_MODELS = ENSEMBLE_MODELS + ("clip_embed", "score_ads")


def _tensor(name: str, dtype: str, dims: str = "[ -1 ]", optional: bool = False) -> str:
    opt = " optional: true" if optional else ""
    return f'{{ name: "{name}" data_type: {dtype} dims: {dims}{opt} }}'


def _python_model(name: str, inputs: list[str], outputs: list[str], limits: ServingLimits,
                  max_batch_size: int = MAX_BATCH_SIZE, extra: str = "") -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {(',' + chr(10) + '  ').join(inputs)}
]
output [
  {(',' + chr(10) + '  ').join(outputs)}
]
dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "limits" value: {{ string_value: '{limits.to_json()}' }} }}
{extra}"""


def render_configs(limits: ServingLimits) -> dict[str, str]:
    """Model name -> config.pbtxt text."""
    L, C, W = limits.max_history, limits.max_candidates, limits.beam_width
    i64, i32 = "TYPE_INT64", "TYPE_INT32"
    configs = {
        "features": _python_model("features", [
            _tensor("item_ids", i64), _tensor("behaviors", i32), _tensor("timestamps", i64),
            _tensor("k", i32, "[ 1 ]"), _tensor("exclude_item_ids", i64, optional=True),
            _tensor("category_ids", i32, optional=True)], [
            _tensor("enc_tokens", i64), _tensor("enc_journey_ids", i64), _tensor("enc_journey_pos", i64),
            _tensor("hist_items", i64, f"[ {L} ]"),
            _tensor("hist_behaviors", i64, f"[ {L} ]"), _tensor("exclude_ids", i64),
            _tensor("allowed_categories", i64)], limits),
        "grace_retrieve": _python_model("grace_retrieve", [
            _tensor("enc_tokens", i64), _tensor("enc_journey_ids", i64), _tensor("enc_journey_pos", i64)], [
            _tensor("grace_items", i64, f"[ {W} ]"), _tensor("grace_scores", "TYPE_FP32", f"[ {W} ]")], limits),
        "clip_retrieve": _python_model("clip_retrieve", [
            _tensor("hist_items", i64, f"[ {L} ]"), _tensor("hist_behaviors", i64, f"[ {L} ]"),
            _tensor("exclude_ids", i64), _tensor("allowed_categories", i64)], [
            _tensor("knn_items", i64), _tensor("knn_scores", "TYPE_FP32")], limits),
        "merge": _python_model("merge", [
            _tensor("grace_items", i64, f"[ {W} ]"), _tensor("knn_items", i64),
            _tensor("exclude_ids", i64), _tensor("allowed_categories", i64)], [
            _tensor("cand_items", i64, f"[ {C} ]"), _tensor("cand_sources", i32, f"[ {C} ]")], limits),
        "ranker": _python_model("ranker", [
            _tensor("hist_items", i64, f"[ {L} ]"), _tensor("hist_behaviors", i64, f"[ {L} ]"),
            _tensor("cand_items", i64, f"[ {C} ]")], [_tensor("logits", "TYPE_FP32", f"[ {C} ]")], limits),
        "calibrate": _python_model("calibrate", [
            _tensor("logits", "TYPE_FP32", f"[ {C} ]"), _tensor("cand_items", i64, f"[ {C} ]"),
            _tensor("cand_sources", i32, f"[ {C} ]"), _tensor("k", i32, "[ 1 ]")], [
            _tensor("top_item_ids", i64), _tensor("pctr", "TYPE_FP32"),
            _tensor("retrieval_source", "TYPE_STRING")], limits),
        # One user per request, scored against up to max_campaigns campaigns.
        "score_ads": _python_model("score_ads", [
            _tensor("item_ids", i64), _tensor("behaviors", i32), _tensor("timestamps", i64),
            _tensor("campaign_ids", i64)], [
            _tensor("pctr", "TYPE_FP32"), _tensor("model_source", "TYPE_STRING")], limits,
            extra=_published({"num_items": limits.num_items, "max_history": CTR_MAX_HISTORY,
                              "num_campaigns": limits.num_campaigns, "max_campaigns": limits.max_campaigns})),
        # The batch dimension counts creatives (rows), not users: up to max_clip_rows per request.
        "clip_embed": _python_model("clip_embed", [
            _tensor("image", "TYPE_UINT8", "[ 28, 28 ]", optional=True),
            _tensor("text", "TYPE_STRING", "[ 1 ]", optional=True)], [
            _tensor("embedding", "TYPE_FP32")], limits, max_batch_size=limits.max_clip_rows),
    }
    configs["recommend"] = _ensemble(limits)
    for text in configs.values():
        validate(text)
    return configs


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    ins = ", ".join(f'{{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = ", ".join(f'{{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'    {{ model_name: "{model}" model_version: -1\n      input_map [ {ins} ]\n      output_map [ {outs} ] }}'


def _ensemble(limits: ServingLimits) -> str:
    same = lambda *names: {n: n for n in names}  # noqa: E731 - tensor names match across steps
    steps = [
        _step("features", same("item_ids", "behaviors", "timestamps", "k", "exclude_item_ids", "category_ids"),
              same("enc_tokens", "enc_journey_ids", "enc_journey_pos", "hist_items", "hist_behaviors", "exclude_ids",
                   "allowed_categories")),
        _step("grace_retrieve", same("enc_tokens", "enc_journey_ids", "enc_journey_pos"), same("grace_items")),
        _step("clip_retrieve", same("hist_items", "hist_behaviors", "exclude_ids", "allowed_categories"),
              same("knn_items")),
        _step("merge", same("grace_items", "knn_items", "exclude_ids", "allowed_categories"),
              same("cand_items", "cand_sources")),
        _step("ranker", same("hist_items", "hist_behaviors", "cand_items"), same("logits")),
        _step("calibrate", same("logits", "cand_items", "cand_sources", "k"),
              same("top_item_ids", "pctr", "retrieval_source")),
    ]
    # Limits published for clients (ModelConfig parameters); values are strings by Triton's schema.
    params = {"num_items": limits.num_items, "max_history": limits.max_history, "max_k": limits.max_k,
              "num_categories": limits.num_categories, "max_exclude": limits.max_exclude}
    param_text = _published(params)
    i64, i32 = "TYPE_INT64", "TYPE_INT32"
    return f"""name: "recommend"
platform: "ensemble"
max_batch_size: {MAX_BATCH_SIZE}
input [
  {_tensor("item_ids", i64)},
  {_tensor("behaviors", i32)},
  {_tensor("timestamps", i64)},
  {_tensor("k", i32, "[ 1 ]")},
  {_tensor("exclude_item_ids", i64, optional=True)},
  {_tensor("category_ids", i32, optional=True)}
]
output [
  {_tensor("top_item_ids", i64)},
  {_tensor("pctr", "TYPE_FP32")},
  {_tensor("retrieval_source", "TYPE_STRING")}
]
ensemble_scheduling {{
  step [
{(',' + chr(10)).join(steps)}
  ]
}}
{param_text}
"""


def _published(params: dict) -> str:
    """Limits published for clients as ModelConfig parameters (values are strings by Triton's schema)."""
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())


def validate(text: str) -> model_config_pb2.ModelConfig:
    """Parses with Triton's schema: unknown fields or bad enum values raise ParseError."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def write_configs(repository: Path, limits: ServingLimits) -> None:
    for name, text in render_configs(limits).items():
        model_dir = repository / name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs an (empty) version folder
        (model_dir / "config.pbtxt").write_text(text)
