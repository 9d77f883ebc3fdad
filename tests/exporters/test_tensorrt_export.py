"""exporters.tensorrt_export: the CPU-side parts everywhere; the engine build and its parity only on a machine
with an NVIDIA GPU and TensorRT (skipped elsewhere with the command to run there)."""

from __future__ import annotations

import numpy as np
import pytest

from exporters import tensorrt_export as te
from serving import gpu_graph
from serving.configs import GPU, render_repository, repository_limits, validate


@pytest.fixture(scope="module")
def built(model_repository):
    limits, _ = repository_limits(model_repository)
    return model_repository, gpu_graph.Sizes(limits, gpu_graph.facts(model_repository)), limits


def test_arguments_and_tolerances(tmp_path):
    a = te.parse_args(["--repository", "r", "--out", str(tmp_path)])
    assert (a.builder, a.fp16, a.models, a.tolerance) == ("auto", False, None, te.FP32_TOLERANCE)
    a = te.parse_args(["--repository", "r", "--out", "o", "--fp16", "--models", "ranker_onnx", "clip_text"])
    assert a.tolerance == te.FP16_TOLERANCE and a.models == ["ranker_onnx", "clip_text"]
    with pytest.raises(SystemExit):
        te.parse_args(["--repository", "r", "--out", "o", "--models", "no_such_model"])


def test_which_models_convert():
    convert, skipped = te.select_models()
    assert [m.name for m in convert] == ["grace_encoder", "ranker_onnx", "sasrec_onnx", "clip_image", "clip_text"]
    assert set(skipped) == {"grace_decoder_step"} and "KV cache" in skipped["grace_decoder_step"]
    convert, skipped = te.select_models(["ranker_onnx", "grace_decoder_step"])
    assert [m.name for m in convert] == ["ranker_onnx"] and set(skipped) == {"grace_decoder_step"}


def test_profiles_are_the_shapes_the_gpu_rendering_warms_up(built, tmp_path):
    repository, sizes, limits = built
    configs = {n: validate(t) for n, t in render_repository(repository, tmp_path / "gpu", GPU).items()}
    for model in gpu_graph.NATIVE_MODELS:
        io = gpu_graph.read_io(gpu_graph.onnx_path(repository, model))
        shapes = te.profile(model, io, sizes)
        assert set(shapes) == {t.name for t in io.inputs}
        cfg = configs[model.name]
        smallest, largest = cfg.model_warmup
        for name, (low, opt, high) in shapes.items():
            assert opt == high and all(1 <= lo <= hi for lo, hi in zip(low, high)), (model.name, name)
            if cfg.max_batch_size > 0:  # the warmup's batch_size is the profile's batch dim
                assert [smallest.batch_size, *smallest.inputs[name].dims] == low, (model.name, name)
                assert [largest.batch_size, *largest.inputs[name].dims] == high, (model.name, name)
            else:
                assert list(smallest.inputs[name].dims) == low and list(largest.inputs[name].dims) == high
    ranker = gpu_graph.NATIVE["ranker_onnx"]
    shapes = te.profile(ranker, gpu_graph.read_io(gpu_graph.onnx_path(repository, ranker)), sizes)
    assert shapes["cand_items"] == ([1, limits.max_candidates], [8, limits.max_candidates], [8, limits.max_candidates])


def test_sample_feeds_are_valid_model_inputs(built):
    """Random inputs within the declared ranges run in ONNX Runtime at both ends of every profile."""
    repository, sizes, limits = built
    rng = np.random.default_rng(0)
    for model in gpu_graph.NATIVE_MODELS:
        io = gpu_graph.read_io(gpu_graph.onnx_path(repository, model))
        assert set(model.values) - set(model.optional) <= {t.name for t in io.inputs}, model.name  # real inputs
        run = te.ort_runner(gpu_graph.onnx_path(repository, model))
        for which in (0, 1):
            feeds = te.sample_feeds(model, io, sizes, which, rng)
            for name, (low, high) in model.values.items():
                if name not in feeds:  # an optional input this export lacks
                    continue
                assert sizes(low) <= feeds[name].min() and feeds[name].max() <= sizes(high), (model.name, name)
            outputs = run(feeds)
            assert all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f"), model.name
    assert sizes("grace_vocab") > 2 and sizes("context_length") > 2 and sizes("ranker_max_batch") == 8


def test_parity_measure_on_onnx_runtime_against_itself(built):
    """The parity function TensorRT is judged by: ONNX Runtime with and without graph optimisations agree to
    float rounding; a perturbed candidate is caught; shape or count mismatches are errors."""
    repository, sizes, _ = built
    model = gpu_graph.NATIVE["ranker_onnx"]
    path = gpu_graph.onnx_path(repository, model)
    io = gpu_graph.read_io(path)
    rng = np.random.default_rng(1)
    feeds = [te.sample_feeds(model, io, sizes, which, rng) for which in (0, 1)]
    reference, plain = te.ort_runner(path), te.ort_runner(path, optimize=False)
    assert te.parity(reference, plain, feeds) < 1e-4
    assert te.parity(reference, lambda f: [o + 0.5 for o in reference(f)], feeds) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError):
        te.max_abs_diff([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError):
        te.max_abs_diff([np.zeros(3)], [])


def test_without_a_gpu_the_command_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(te, "gpu_present", lambda: False)
    with pytest.raises(te.TensorRTUnavailable, match="exporters.tensorrt_export"):
        te.choose_builder()
    with pytest.raises(SystemExit, match="no NVIDIA GPU"):
        te.main(["--repository", "r", "--out", str(tmp_path)])
    monkeypatch.setattr(te, "gpu_present", lambda: True)
    monkeypatch.setattr(te, "tensorrt_module", lambda: None)
    monkeypatch.setattr(te.shutil, "which", lambda name: None)
    with pytest.raises(te.TensorRTUnavailable, match="neither the tensorrt Python package nor trtexec"):
        te.choose_builder()


def test_trtexec_shape_arguments():
    assert te.TrtexecBuilder._shapes({"tokens": [1, 288], "valid": [1, 288]}) == "tokens:1x288,valid:1x288"


def _engine_skip_reason() -> str | None:
    if not te.gpu_present():
        return f"no NVIDIA GPU on this machine; on one with TensorRT run: {te.COMMAND}"
    if te.tensorrt_module() is None and te.shutil.which("trtexec") is None:
        return f"neither the tensorrt Python package nor trtexec is installed; with one of them run: {te.COMMAND}"
    return None


@pytest.mark.skipif(_engine_skip_reason() is not None, reason=_engine_skip_reason() or "")
def test_engines_build_and_match_onnx_runtime(built, tmp_path):
    """On a GPU machine: every model that converts gets a plan within the FP32 tolerance of ONNX Runtime, and
    the gpu rendering serves the plans on the tensorrt backend."""
    repository, _, _ = built
    report = te.export(repository, tmp_path / "plans", te.choose_builder())
    assert set(report["models"]) == {m.name for m in te.select_models()[0]}
    for name, result in report["models"].items():
        assert result["max_abs_diff"] <= te.FP32_TOLERANCE, (name, result["max_abs_diff"])
    configs = render_repository(repository, tmp_path / "gpu", GPU, tmp_path / "plans")
    assert validate(configs["ranker_onnx"]).platform == "tensorrt_plan"
