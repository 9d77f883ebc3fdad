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


def test_limits_written_by_another_version_ask_for_a_rebuild():
    written = json.loads(ServingLimits(num_items=10, num_categories=2).to_json())
    written["max_queue_size"] = 256  # a limit an older build wrote, unknown here
    with pytest.raises(ValueError, match=r"\['max_queue_size'\] are unknown.*rebuild it"):
        ServingLimits.from_dict(written)


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
        # as the graph declares: a delay where batching paid, none where it cost latency (score_ads)
        assert cfg.dynamic_batching.max_queue_delay_microseconds == STEPS[name].batching.queue_delay_us
        assert (cfg.dynamic_batching.max_queue_delay_microseconds > 0) == (name != "score_ads"), name
        # No queue policy: one turns off tritonserver's payload prefetching, and its batcher then now and then
        # sleeps 500 ms with the instance idle (serving/configs.py: _queue). nginx bounds the load instead.
        assert not cfg.dynamic_batching.HasField("default_queue_policy"), name
        assert not cfg.dynamic_batching.priority_queue_policy, name
        # Ragged batching: requests of different history lengths share a batch (each keeps its own tensors).
        ragged = {i.name for i in cfg.input if i.allow_ragged_batch}
        variable = {i.name for i in cfg.input if -1 in i.dims}
        assert ragged == (set() if STEPS[name].batching.rows_are_batch else variable), name
        assert len(cfg.instance_group) == 1
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert cfg.instance_group[0].count == STEPS[name].batching.instances >= 1  # as the graph declares
        assert ServingLimits.from_json(cfg.parameters["limits"].string_value) == limits
        assert len(cfg.input) > 0 and len(cfg.output) > 0
        names = [t.name for t in cfg.input] + [t.name for t in cfg.output]
        assert len(names) == len(set(names)), name
    assert not configs["recommend"].HasField("dynamic_batching")


def test_fixed_dims_follow_the_limits(parsed):
    limits, configs = parsed
    L, W, C = limits.max_history, limits.beam_width, limits.max_candidates
    expect = {
        ("side_retrieve", "hist_items"): [L], ("rank", "hist_items"): [L],
        ("grace_retrieve", "grace_items"): [W], ("rank", "grace_items"): [W], ("rank", "cand_items"): [C],
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
    assert rounds == 2  # retrieval (GRACE beside the side sources, both on the request) -> rank
    for out in ens.output:
        assert out.name in producers, out.name
        dtype, dims, _ = produced[out.name]
        assert (out.data_type, list(out.dims)) == (dtype, dims), out.name
    # The retrieval steps both run off the request, so the scheduler runs them in parallel.
    assert producers["grace_items"] == "grace_retrieve" and producers["knn_items"] == "side_retrieve"
    assert producers["recent_items"] == producers["sasrec_items"] == "side_retrieve"
    # ... and rank consumes every retrieval source; its diagnostics output is not part of the ensemble.
    rank = next(s for s in steps if s.model_name == "rank")
    assert {"grace_items", "knn_items", "recent_items", "sasrec_items"} <= set(rank.input_map.values())
    assert "cand_items" not in producers


def test_ensemble_inputs_match_the_request_steps(parsed):
    _, configs = parsed
    ens_inputs = {t.name: (t.data_type, list(t.dims), t.optional) for t in configs["recommend"].input}
    for model in ("grace_retrieve", "side_retrieve"):  # both take the request as the client sent it
        assert {t.name: (t.data_type, list(t.dims), t.optional) for t in configs[model].input} == ens_inputs


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
    cfg = validate((repo / "rank" / "config.pbtxt").read_text())
    assert json.loads(cfg.parameters["limits"].string_value)["num_items"] == 100


# --- the gpu rendering ------------------------------------------------------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from serving import gpu_graph, ort as serving_ort  # noqa: E402
from serving.configs import CPU, GPU, TENSORRT_PARAMETERS, render_repository, repository_limits  # noqa: E402
from serving.steps import IMPLEMENTATIONS  # noqa: E402

NATIVE_MODELS = tuple(model.name for model in gpu_graph.NATIVE_MODELS)
ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
              onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.UINT8: "TYPE_UINT8"}


@pytest.fixture(scope="module")
def gpu_repository(model_repository, tmp_path_factory) -> Path:
    """The built repository rendered for the GPU by the command CI and the GPU image run (no engine build)."""
    out = tmp_path_factory.mktemp("gpu") / "model_repository_gpu"
    subprocess.run([sys.executable, "-m", "serving.configs", "--target", "gpu", "--from-repository",
                    str(model_repository), "--out", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return out


def _configs_of(repository: Path) -> dict[str, model_config_pb2.ModelConfig]:
    return {p.parent.name: validate(p.read_text()) for p in repository.glob("*/config.pbtxt")}


def test_gpu_repository_parses_with_native_models_on_the_gpu(gpu_repository):
    configs = _configs_of(gpu_repository)
    assert set(configs) == set(PYTHON_MODELS) | {"recommend"} | set(NATIVE_MODELS)
    for name, cfg in configs.items():
        assert cfg.name == name
        kinds = {g.kind for g in cfg.instance_group}
        if name in NATIVE_MODELS:
            assert cfg.backend == "onnxruntime" and kinds == {model_config_pb2.ModelInstanceGroup.KIND_GPU}, name
            assert cfg.default_model_filename == gpu_graph.NATIVE_FILE
            assert (gpu_repository / name / "1" / gpu_graph.NATIVE_FILE).is_file()
            assert [w.name for w in cfg.model_warmup] == ["smallest shapes", "largest shapes"]
        elif name != "recommend":  # python steps stay python, on the CPU
            assert cfg.backend == "python" and kinds == {model_config_pb2.ModelInstanceGroup.KIND_CPU}, name
    # TensorRT execution provider (FP16) where the model converts; the decoder step runs on the CUDA EP.
    for model in gpu_graph.NATIVE_MODELS:
        accelerators = configs[model.name].optimization.execution_accelerators.gpu_execution_accelerator
        if model.tensorrt:
            assert [a.name for a in accelerators] == ["tensorrt"], model.name
            assert dict(accelerators[0].parameters) == TENSORRT_PARAMETERS
            assert accelerators[0].parameters["precision_mode"] == "FP16"
        else:
            assert len(accelerators) == 0 and model.why_not_tensorrt, model.name
    limits, _ = repository_limits(gpu_repository)
    batches = {name: cfg.max_batch_size for name, cfg in configs.items() if name in NATIVE_MODELS}
    assert batches == {"grace_encoder": 0, "grace_decoder_step": 0, "ranker_onnx": MAX_BATCH_SIZE,
                       "sasrec_onnx": MAX_BATCH_SIZE, "clip_image": limits.max_clip_rows, "clip_text": limits.max_clip_rows}
    for name, batch in batches.items():  # Triton batches across requests only what has a batch axis
        assert configs[name].HasField("dynamic_batching") == (batch > 0), name


def test_gpu_native_tensors_match_the_onnx_files(gpu_repository):
    """Names, dtypes and dims of every native model's config against the ONNX graph itself (read with onnx,
    not the ONNX Runtime reader the rendering uses); the warmup requests fit those dims."""
    configs = _configs_of(gpu_repository)
    for name in NATIVE_MODELS:
        cfg = configs[name]
        graph_ = onnx.load(str(gpu_repository / name / "1" / gpu_graph.NATIVE_FILE)).graph
        initializers = {i.name for i in graph_.initializer}

        def declared(values):
            return {v.name: (ONNX_TYPES[v.type.tensor_type.elem_type],
                             [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
                    for v in values if v.name not in initializers}

        batch = [-1] if cfg.max_batch_size > 0 else []
        for side, tensors in ((graph_.input, cfg.input), (graph_.output, cfg.output)):
            configured = {t.name: (model_config_pb2.DataType.Name(t.data_type), batch + list(t.dims)) for t in tensors}
            in_file = declared(side)
            assert {n: t for n, (t, _) in configured.items()} == {n: t for n, (t, _) in in_file.items()}, name
            for tensor, (_, dims) in configured.items():  # a dim the file fixes is the config's; a dynamic one
                want = in_file[tensor][1]                  # may be what ONNX Runtime's shape inference fixed
                assert len(dims) == len(want) and all(w in (-1, d) for w, d in zip(want, dims)), (name, tensor)
        inputs = {t.name: list(t.dims) for t in cfg.input}
        for warmup in cfg.model_warmup:
            assert 1 <= warmup.batch_size <= max(cfg.max_batch_size, 1)
            assert set(warmup.inputs) == set(inputs), name
            for key, data in warmup.inputs.items():
                assert len(data.dims) == len(inputs[key]) and data.zero_data != data.random_data
                assert all(want in (-1, got) and got >= 1 for want, got in zip(inputs[key], data.dims)), (name, key)


def test_gpu_rendering_keeps_the_graph(gpu_repository, model_repository):
    """The python steps and the ensemble are the cpu rendering's, plus the steps' map to their native models."""
    gpu, cpu = _configs_of(gpu_repository), _configs_of(model_repository)
    assert set(cpu) == set(PYTHON_MODELS) | {"recommend"}
    for name, cfg in cpu.items():
        rendered = gpu[name]
        key, mapping = serving_ort.ONNX_MODELS_PARAMETER, {}
        if key in rendered.parameters:
            mapping = json.loads(rendered.parameters[key].string_value)
            del rendered.parameters[key]
        assert mapping == {m.file: m.name for m in gpu_graph.NATIVE_MODELS if m.step.name == name}, name
        assert rendered == cfg, name


def test_cpu_rendering_of_a_repository_is_its_own_configs(model_repository, tmp_path):
    render_repository(model_repository, tmp_path / "cpu", CPU)
    assert _configs_of(tmp_path / "cpu") == _configs_of(model_repository)
    assert not any((tmp_path / "cpu" / name).exists() for name in NATIVE_MODELS)
    # The cpu rendering's steps open ONNX Runtime sessions, as before.
    assert isinstance(serving_ort.session(tmp_path / "cpu" / "rank" / "1" / "ranker.onnx"),
                      serving_ort.ort.InferenceSession)


def test_tensorrt_plans_render_on_the_tensorrt_backend(model_repository, tmp_path):
    """Where exporters.tensorrt_export built a plan, the gpu rendering serves it on the tensorrt backend; a plan
    for a model that does not convert is ignored."""
    plans = tmp_path / "plans"
    for name in ("ranker_onnx", "grace_decoder_step"):
        (plans / name / "1").mkdir(parents=True)
        (plans / name / "1" / gpu_graph.PLAN_FILE).write_bytes(b"not a real engine")
    out = tmp_path / "gpu"
    configs = {n: validate(t) for n, t in render_repository(model_repository, out, GPU, plans).items()}
    ranker = configs["ranker_onnx"]
    assert ranker.platform == "tensorrt_plan" and not ranker.backend
    assert ranker.default_model_filename == gpu_graph.PLAN_FILE
    assert len(ranker.optimization.execution_accelerators.gpu_execution_accelerator) == 0
    assert (out / "ranker_onnx" / "1" / gpu_graph.PLAN_FILE).read_bytes() == b"not a real engine"
    assert not (out / "ranker_onnx" / "1" / gpu_graph.NATIVE_FILE).exists()
    assert configs["grace_decoder_step"].backend == "onnxruntime"
    with pytest.raises(ValueError):
        render_repository(model_repository, model_repository, GPU)


def test_gpu_target_needs_the_onnx_files():
    with pytest.raises(ValueError, match="built repository"):
        render_configs(LIMITS, target=GPU)
    with pytest.raises(ValueError, match="target"):
        render_configs(LIMITS, target="tpu")


class FakeBls(types.ModuleType):
    """triton_python_backend_utils as far as BlsSession uses it: a request is checked against the native
    model's config (names, dtypes, dims, batch size) as Triton would, then run by ONNX Runtime on the model's
    file, so the gpu rendering's python steps can run here without a GPU."""

    TRITONSERVER_MEMORY_CPU = 0

    def __init__(self, repository: Path):
        super().__init__("triton_python_backend_utils")
        self.repository, self.calls, self.sessions = repository, Counter(), {}

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    @staticmethod
    def PreferredMemory(kind, device):
        return kind, device

    def get_output_tensor_by_name(self, response, name):
        return response.outputs.get(name)

    def InferenceRequest(self, model_name, requested_output_names, inputs, preferred_memory=None):
        bls = self
        assert preferred_memory == (self.TRITONSERVER_MEMORY_CPU, 0)

        class Response:
            def __init__(self, outputs):
                self.outputs = outputs

            def has_error(self):
                return False

        class Request:
            def exec(self):
                cfg = validate((bls.repository / model_name / "config.pbtxt").read_text())
                declared = {t.name: t for t in cfg.input}
                feeds = {t.name(): t.as_numpy() for t in inputs}
                assert set(feeds) == set(declared), (model_name, sorted(feeds))
                for name, value in feeds.items():
                    t = declared[name]
                    want = model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_")
                    assert {"FP32": np.float32, "INT64": np.int64}[want] == value.dtype, (model_name, name)
                    shape = value.shape[1:] if cfg.max_batch_size > 0 else value.shape
                    if cfg.max_batch_size > 0:
                        assert 1 <= value.shape[0] <= cfg.max_batch_size, (model_name, value.shape)
                    assert len(shape) == len(t.dims), (model_name, name, value.shape)
                    assert all(d in (-1, s) for d, s in zip(t.dims, shape)), (model_name, name, value.shape)
                bls.calls[model_name] += 1
                if model_name not in bls.sessions:
                    path = bls.repository / model_name / "1" / gpu_graph.NATIVE_FILE
                    bls.sessions[model_name] = serving_ort.ort.InferenceSession(
                        str(path), providers=["CPUExecutionProvider"])
                values = bls.sessions[model_name].run(list(requested_output_names), feeds)
                return Response({n: bls.Tensor(n, v) for n, v in zip(requested_output_names, values)})

        return Request()


def test_gpu_steps_reach_their_native_models_through_bls(gpu_repository, model_repository, monkeypatch):
    """The gpu rendering's python steps, loaded from its repository, send their ONNX feeds to the native models
    (BLS, faked by ONNX Runtime here) and answer exactly what the cpu rendering's steps answer."""
    fake = FakeBls(gpu_repository)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    limits, _ = repository_limits(model_repository)

    def step(name, repository):
        return IMPLEMENTATIONS[name].create(repository / name / "1", limits)

    items = np.array(limits.example_item_ids[:5], np.int64)
    request = dict(item_ids=items, behaviors=np.ones(len(items), np.int32),
                   timestamps=np.arange(1_700_000_000, 1_700_000_000 + len(items), dtype=np.int64),
                   k=np.array([10], np.int32))
    cpu_grace = step("grace_retrieve", model_repository)(**request)
    gpu_grace = step("grace_retrieve", gpu_repository)(**request)
    gpu_retriever = step("grace_retrieve", gpu_repository).retriever
    assert isinstance(gpu_retriever.encoder, serving_ort.BlsSession)
    # the native decoder's requests axis is dynamic (-1): queued requests share each step call, as on the CPU
    assert gpu_retriever.batched and (gpu_retriever.level_offsets is None) == (
        step("grace_retrieve", model_repository).retriever.level_offsets is None)
    for name in cpu_grace:
        np.testing.assert_allclose(gpu_grace[name], cpu_grace[name], rtol=1e-5, atol=1e-5)
    cand = np.zeros(limits.max_candidates, np.int64)
    cand[:limits.beam_width] = cpu_grace["grace_items"]
    features = step("side_retrieve", model_repository)(**request)  # the validated history it hands rank
    rank = [np.stack([a] * 3) for a in (features["hist_items"], features["hist_behaviors"], cand)]  # a batch of 3
    cpu_rank, gpu_rank = step("rank", model_repository), step("rank", gpu_repository)
    for x, y in zip(cpu_rank.score(*rank), gpu_rank.score(*rank)):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
    clip = dict(image=np.random.default_rng(0).integers(0, 255, (3, 28, 28), dtype=np.uint8),
                text=np.array([[b"a red sneaker"], [b"a bag"], [b"boots"]], dtype=object))
    cpu_clip, gpu_clip = step("clip_embed", model_repository), step("clip_embed", gpu_repository)
    texts = [t.decode() for t in clip["text"][:, 0]]
    got = gpu_clip.run_batch([dict(image=clip["image"], text=texts)])[0][0]
    want = cpu_clip.run_batch([dict(image=clip["image"], text=texts)])[0][0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    side = [request] * 2  # two queued requests
    cpu_side, gpu_side = step("side_retrieve", model_repository), step("side_retrieve", gpu_repository)
    for cpu_out, gpu_out in zip(cpu_side.run_batch(side), gpu_side.run_batch(side)):
        for x, y in zip(cpu_out, gpu_out):  # items equal, scores to the tolerance
            if x.dtype.kind == "i":
                np.testing.assert_array_equal(y, x)
            else:
                np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
    assert set(fake.calls) == set(NATIVE_MODELS), fake.calls
    assert fake.calls["grace_encoder"] == 1 and fake.calls["ranker_onnx"] == 1 and fake.calls["sasrec_onnx"] == 1


def test_gpu_warmup_requests_run_in_onnx_runtime(gpu_repository):
    """Each warmup request, built as Triton builds it (zero or random data of the declared dims), runs on the
    model file: a warmup the model cannot run would fail the native model's load on the GPU."""
    numpy_types = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}
    rng = np.random.default_rng(0)
    for name in NATIVE_MODELS:
        cfg = validate((gpu_repository / name / "config.pbtxt").read_text())
        sess = serving_ort.ort.InferenceSession(str(gpu_repository / name / "1" / gpu_graph.NATIVE_FILE),
                                                providers=["CPUExecutionProvider"])
        for warmup in cfg.model_warmup:
            feeds = {}
            for key, data in warmup.inputs.items():
                shape = ([warmup.batch_size] if cfg.max_batch_size > 0 else []) + list(data.dims)
                dtype = numpy_types[model_config_pb2.DataType.Name(data.data_type)]
                feeds[key] = rng.random(shape).astype(dtype) if data.random_data else np.zeros(shape, dtype)
            outputs = sess.run(None, feeds)
            assert len(outputs) == len(cfg.output), (name, warmup.name)
