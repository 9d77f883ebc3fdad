"""The serving graph is the one declaration: names unique, every consumer reads it, steps match their code."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from serving import graph
from serving.backend import check_signature
from serving.contract import ServingLimits
from serving.steps import IMPLEMENTATIONS

ROOT = Path(__file__).resolve().parents[2]
# Every module of the serving room, the reference, the build and the served entries name steps and tensors
# through serving.graph, never as literals. The one exception: the CLIP export manifest's own "image" / "text"
# keys (file names of the two ONNX towers), read by the embedder.
MANIFEST_KEYS = {"serving/clip/embedder.py": {"image", "text"}}
GRAPH_READERS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "serving").rglob("*.py")
                       if p.name != "graph.py") + [
    "models/reference.py", "exporters/onnx_export.py", "exporters/build_repository.py"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "model_repository").glob("*/1/model.py"))


def _all_tensors() -> list[graph.Tensor]:
    tensors = [t for s in graph.SERVED_STEPS for t in s.inputs + s.outputs]
    return tensors + [t for e in graph.ENSEMBLES for t in e.inputs + e.outputs]


def test_tensor_names_are_declared_once():
    """One Tensor object per name: a name cannot mean two dtypes or shapes in two places."""
    by_name: dict[str, graph.Tensor] = {}
    for tensor in _all_tensors():
        assert by_name.setdefault(tensor.name, tensor) is tensor, f"{tensor.name} is declared twice"


def test_step_names_are_unique_and_every_step_has_an_implementation():
    names = [s.name for s in graph.SERVED_STEPS] + [e.name for e in graph.ENSEMBLES]
    assert len(names) == len(set(names))
    assert set(IMPLEMENTATIONS) == set(graph.STEPS)
    for name, cls in IMPLEMENTATIONS.items():
        assert cls.STEP is graph.STEPS[name]
        check_signature(cls)


def test_check_signature_rejects_a_step_whose_run_disagrees_with_the_graph():
    class Wrong(IMPLEMENTATIONS[graph.RANK.name]):
        def run(self, hist_items, exclude_ids, allowed_categories):  # no hist_behaviors, no catch-all
            return ()

    with pytest.raises(TypeError, match="hist_behaviors"):
        check_signature(Wrong)


def test_every_retrieval_source_feeds_the_merge_in_graph_order():
    merge_inputs = [t.name for t in graph.RANK.inputs]
    positions = [merge_inputs.index(source.items.name) for source in graph.RETRIEVAL_SOURCES]
    assert positions == sorted(positions)
    for source in graph.RETRIEVAL_SOURCES:
        assert source.items in source.step.outputs
        assert source.step in graph.RECOMMEND.steps
    assert graph.SOURCE_NAMES == ("grace", "recent", "embedding_knn", "sasrec")


def test_ensemble_steps_run_in_dataflow_order():
    """Each step's inputs exist before it runs (the reference runs the steps in exactly this order)."""
    available = {t.name for t in graph.RECOMMEND.inputs}
    for step in graph.RECOMMEND.steps:
        missing = {t.name for t in step.inputs if not t.optional} - available
        assert not missing, (step.name, missing)
        available |= {t.name for t in step.outputs}
    assert {t.name for t in graph.RECOMMEND.outputs} <= available


def test_dims_name_real_limits():
    fields = {f for f in ServingLimits.__dataclass_fields__}
    for tensor in _all_tensors():
        for d in tensor.dims:
            assert isinstance(d, int) or d in fields, (tensor.name, d)
    for step in graph.SERVED_STEPS:
        for _, field in step.published:
            assert field in fields


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        graph.Tensor("x", "FLOAT64")


@pytest.mark.parametrize("path", GRAPH_READERS)
def test_graph_readers_do_not_repeat_step_or_tensor_names(path):
    names = {t.name for t in _all_tensors()} | set(graph.STEPS) | {e.name for e in graph.ENSEMBLES}
    tree = ast.parse((ROOT / path).read_text())
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    literals -= MANIFEST_KEYS.get(path, set())
    assert not literals & names, f"{path} spells {sorted(literals & names)}; read them from serving.graph"


def test_steps_name_their_artifacts_through_their_families():
    for step in graph.SERVED_STEPS:
        assert len(step.artifacts) == len(set(step.artifacts)), step.name
    source = inspect.getsource(graph)
    assert ".npy\"" not in source and ".onnx\"" not in source  # file names live beside their save/load
