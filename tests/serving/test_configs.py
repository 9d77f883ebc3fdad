"""The rendered Triton configs: schema-valid, and the ensemble's wiring consistent with its composing models."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.configs import render_configs, validate, write_configs
from serving.graph import RECOMMEND, STEPS, Batching
from serving.ads.features import MAX_HISTORY as CTR_MAX_HISTORY
from serving.contract import ServingLimits

ROOT = Path(__file__).resolve().parents[2]
ENSEMBLE_MODELS = tuple(step.name for step in RECOMMEND.steps)  # `recommend`
PYTHON_MODELS = tuple(STEPS)  # python-backend models, each with a committed 1/model.py
MAX_BATCH_SIZE = Batching().max_batch_size
LIMITS = ServingLimits(num_items=100, num_categories=4)
ODD_LIMITS = ServingLimits(num_items=100, num_categories=4, max_history=7, max_k=9, max_exclude=33,
                           beam_width=5, knn_candidates=13, max_candidates=11)


@pytest.fixture(scope="module", params=[LIMITS, ODD_LIMITS], ids=["default", "odd"])
def parsed(request) -> tuple[ServingLimits, dict[str, model_config_pb2.ModelConfig]]:
    return request.param, {name: validate(text) for name, text in render_configs(request.param).items()}


def _tensors(tensors) -> dict[str, model_config_pb2.ModelInput]:
    return {t.name: t for t in tensors}


def test_all_configs_parse_and_are_named_after_their_model(parsed):
    limits, configs = parsed
    assert set(configs) == set(PYTHON_MODELS) | {"recommend"}
    for name, cfg in configs.items():
        assert cfg.name == name
        # clip_embed's batch dimension counts creatives, the others' count users (one per request).
        assert cfg.max_batch_size == (limits.max_clip_rows if name == "clip_embed" else MAX_BATCH_SIZE)
    assert configs["recommend"].platform == "ensemble"


def test_ads_models_publish_their_limits(parsed):
    limits, configs = parsed
    params = {k: v.string_value for k, v in configs["score_ads"].parameters.items() if k != "limits"}
    assert params == {"num_items": str(limits.num_items), "max_history": str(CTR_MAX_HISTORY),
                      "num_campaigns": str(limits.num_campaigns), "max_campaigns": str(limits.max_campaigns),
                      "behaviors": json.dumps(list(limits.event_names)),
                      "example_item_ids": json.dumps(list(limits.example_item_ids))}
    clip = configs["clip_embed"]
    assert {t.name for t in clip.input} == {"image", "text"} and all(t.optional for t in clip.input)
    assert list(_tensors(clip.input)["image"].dims) == [28, 28]


def test_recommend_publishes_the_datasets_vocabulary():
    limits = ServingLimits(num_items=5, num_categories=2, event_names=("rated_low", "rated_high"),
                           category_names=("drama", "comedy"), example_item_ids=(10**12 + 3, 7))
    params = {k: v.string_value for k, v in validate(render_configs(limits)["recommend"]).parameters.items()}
    assert json.loads(params["behaviors"]) == ["rated_low", "rated_high"]
    assert json.loads(params["categories"]) == ["drama", "comedy"]
    assert json.loads(params["example_item_ids"]) == [10**12 + 3, 7]
    assert ServingLimits.from_json(limits.to_json()) == limits  # the scaffold reads them back unchanged


def test_validate_rejects_unknown_fields_and_bad_enums():
    with pytest.raises(text_format.ParseError):
        validate('name: "x" backend: "python" no_such_field: 1')
    with pytest.raises(text_format.ParseError):
        validate('name: "x" input [ { name: "a" data_type: TYPE_NOPE dims: [ 1 ] } ]')


def test_python_models_have_dynamic_batching_and_limits(parsed):
    limits, configs = parsed
    for name in PYTHON_MODELS:
        cfg = configs[name]
        assert cfg.backend == "python"
        assert cfg.HasField("dynamic_batching"), name
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
        policy = cfg.dynamic_batching.default_queue_policy  # bounded: a stalled step refuses, never hoards
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT, name
        assert policy.default_timeout_microseconds == limits.queue_timeout_ms * 1000 > 0
        assert policy.max_queue_size == limits.max_queue_size > 0
        assert len(cfg.instance_group) == 1
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert ServingLimits.from_json(cfg.parameters["limits"].string_value) == limits
        assert len(cfg.input) > 0 and len(cfg.output) > 0
        names = [t.name for t in cfg.input] + [t.name for t in cfg.output]
        assert len(names) == len(set(names)), name
    assert not configs["recommend"].HasField("dynamic_batching")


def test_fixed_dims_follow_the_limits(parsed):
    limits, configs = parsed
    L, W, C = limits.max_history, limits.beam_width, limits.max_candidates
    expect = {
        ("features", "hist_items"): [L], ("clip_retrieve", "hist_items"): [L], ("ranker", "hist_items"): [L],
        ("grace_retrieve", "grace_items"): [W], ("merge", "grace_items"): [W],
        ("merge", "cand_items"): [C], ("ranker", "cand_items"): [C], ("ranker", "logits"): [C],
        ("calibrate", "logits"): [C], ("calibrate", "cand_sources"): [C],
    }
    for (model, tensor), dims in expect.items():
        cfg = configs[model]
        t = (_tensors(cfg.input) | _tensors(cfg.output))[tensor]
        assert list(t.dims) == dims, (model, tensor)
    params = {k: v.string_value for k, v in configs["recommend"].parameters.items()}
    assert params == {"num_items": str(limits.num_items), "max_history": str(L), "max_k": str(limits.max_k),
                      "num_categories": str(limits.num_categories), "max_exclude": str(limits.max_exclude),
                      "behaviors": json.dumps(list(limits.event_names)),
                      "categories": json.dumps(list(limits.category_names)),
                      "example_item_ids": json.dumps(list(limits.example_item_ids))}


def test_ensemble_steps_reference_existing_models_once(parsed):
    _, configs = parsed
    steps = configs["recommend"].ensemble_scheduling.step
    names = [s.model_name for s in steps]
    assert sorted(names) == sorted(ENSEMBLE_MODELS)
    for s in steps:
        assert s.model_name in ENSEMBLE_MODELS and s.model_name in configs
        assert s.model_version == -1


def test_ensemble_maps_match_composing_model_tensors(parsed):
    _, configs = parsed
    for s in configs["recommend"].ensemble_scheduling.step:
        model = configs[s.model_name]
        inputs, outputs = _tensors(model.input), _tensors(model.output)
        assert set(s.input_map) <= set(inputs), (s.model_name, set(s.input_map) - set(inputs))
        assert set(s.output_map) <= set(outputs), (s.model_name, set(s.output_map) - set(outputs))
        required = {n for n, t in inputs.items() if not t.optional}
        assert required <= set(s.input_map), (s.model_name, required - set(s.input_map))
        assert len(s.output_map) > 0


def test_ensemble_dataflow_is_complete_acyclic_and_type_consistent(parsed):
    _, configs = parsed
    ens = configs["recommend"]
    # Ensemble tensor name -> (data_type, dims, optional) of whoever produces it.
    produced: dict[str, tuple[int, list[int], bool]] = {
        t.name: (t.data_type, list(t.dims), t.optional) for t in ens.input}
    producers: dict[str, str] = {}
    steps = list(ens.ensemble_scheduling.step)
    for s in steps:
        for key, tensor in s.output_map.items():
            assert tensor not in producers and tensor not in produced, f"{tensor} produced twice"
            producers[tensor] = s.model_name
    # Resolve steps in dataflow order (Triton does not require list order, only an acyclic graph).
    pending, rounds = list(steps), 0
    while pending:
        ready = [s for s in pending if all(v in produced for v in s.input_map.values())]
        assert ready, f"unresolvable (cycle or missing tensor): {[s.model_name for s in pending]}"
        for s in ready:
            model = configs[s.model_name]
            inputs, outputs = _tensors(model.input), _tensors(model.output)
            for key, tensor in s.input_map.items():
                dtype, dims, optional = produced[tensor]
                assert inputs[key].data_type == dtype, (s.model_name, key)
                assert list(inputs[key].dims) == dims, (s.model_name, key, list(inputs[key].dims), dims)
                if optional:  # an optional ensemble input may be absent: the consumer must allow that
                    assert inputs[key].optional, (s.model_name, key)
            for key, tensor in s.output_map.items():
                produced[tensor] = (outputs[key].data_type, list(outputs[key].dims), False)
            pending.remove(s)
        rounds += 1
    assert rounds >= 4  # features -> retrieval -> merge -> ranker -> calibrate is a chain
    for out in ens.output:
        assert out.name in producers, out.name
        dtype, dims, _ = produced[out.name]
        assert (out.data_type, list(out.dims)) == (dtype, dims), out.name
    # Both retrieval sources run off the features step, so the scheduler can run them in parallel.
    assert producers["grace_items"] == "grace_retrieve" and producers["knn_items"] == "clip_retrieve"
    assert producers["recent_items"] == "recent_retrieve"
    # ... and the merge consumes every retrieval source.
    merge = next(s for s in steps if s.model_name == "merge")
    assert {"grace_items", "knn_items", "recent_items"} <= set(merge.input_map.values())


def test_ensemble_inputs_match_features_model(parsed):
    _, configs = parsed
    ens_inputs = {t.name: (t.data_type, list(t.dims), t.optional) for t in configs["recommend"].input}
    feat_inputs = {t.name: (t.data_type, list(t.dims), t.optional) for t in configs["features"].input}
    assert ens_inputs == feat_inputs


def _imported_class(tree: ast.Module) -> tuple[str, str]:
    """The (module, class) a thin model.py imports as TritonPythonModel."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.asname == "TritonPythonModel":
                    return node.module, alias.name
    raise AssertionError("model.py does not import a TritonPythonModel")


@pytest.mark.parametrize("model", PYTHON_MODELS)
def test_committed_model_py_reads_the_configured_inputs(model):
    """Each committed 1/model.py is one import from the serving room, of the class serving the step of its
    folder's name, whose run() takes exactly the inputs its config has (read with ast: no pb_utils)."""
    import importlib
    import inspect

    path = ROOT / "model_repository" / model / "1" / "model.py"
    if not path.exists():
        pytest.skip(f"{path} not present")
    tree = ast.parse(path.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert len(imports) == 1 and imports[0].module.startswith("serving."), "model.py must stay a thin import"
    module, name = _imported_class(tree)
    cls = getattr(importlib.import_module(module), name)
    assert cls.STEP.name == model
    cfg = validate(render_configs(LIMITS)[model])
    params = inspect.signature(cls.run).parameters
    named = {n for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD}
    required = {n for n in named if params[n].default is inspect.Parameter.empty}
    optional = named - required
    catch_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    config_required = {t.name for t in cfg.input if not t.optional}
    assert required <= config_required and (catch_all or required == config_required)
    assert optional == {t.name for t in cfg.input if t.optional}


def test_write_configs_creates_version_folders(tmp_path):
    repo = tmp_path / "repo"
    rendered = render_configs(LIMITS)
    for _ in range(2):  # idempotent: a rebuild over an existing repository works
        write_configs(repo, LIMITS)
    assert {p.name for p in repo.iterdir()} == set(rendered)
    for name, text in rendered.items():
        assert (repo / name / "1").is_dir(), name
        assert (repo / name / "config.pbtxt").read_text() == text
        assert validate((repo / name / "config.pbtxt").read_text()).name == name
    assert list((repo / "recommend" / "1").iterdir()) == []
    # The limits embedded in the written configs are the ones passed in.
    cfg = validate((repo / "merge" / "config.pbtxt").read_text())
    assert json.loads(cfg.parameters["limits"].string_value)["num_items"] == 100
