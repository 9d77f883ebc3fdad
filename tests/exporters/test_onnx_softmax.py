"""exporters.onnx_softmax floors every Softmax input at its row maximum minus 80: the same probabilities to float32
precision (masked rows, fully masked rows and both opsets of ReduceMax), and the exporters keep the floor only where
the caller's parity holds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from exporters import onnx_export
from exporters.onnx_softmax import FLOOR, floor_softmax, floor_softmax_file
from serving.ort import session
from tests.exporters.test_onnx_slim import _Heads, _run


def _softmax_model(opset: int, axis: int = -1) -> onnx.ModelProto:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=axis, name="sm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _scores(rng) -> np.ndarray:
    x = rng.normal(0.0, 3.0, (6, 40)).astype(np.float32)
    x[0, 5:] = -1e30  # masked as the attention masks do
    x[1, ::2] = -np.inf
    x[2, 1:] = x[2, 0] - 95.0  # real scores far below the row's maximum (an underflowing exponential)
    x[3] = -1e30  # a row with no visible key
    return x


@pytest.mark.parametrize("opset", [17, 18])
def test_the_floor_keeps_the_probabilities(tmp_path, opset):
    model = _softmax_model(opset)
    plain, floored = tmp_path / "plain.onnx", tmp_path / "floored.onnx"
    onnx.save(model, str(plain))
    onnx.save(model, str(floored))
    assert floor_softmax_file(floored) == 1
    nodes = onnx.load(str(floored)).graph.node
    assert [n.op_type for n in nodes] == ["ReduceMax", "Sub", "Max", "Softmax"]
    x = _scores(np.random.default_rng(0))
    want, got = (session(p).run(None, {"x": x})[0] for p in (plain, floored))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)
    # Masked entries had exactly 0 and now have at most e^-80 of the row; the fully masked row stays uniform.
    assert got[0, 5:].max() <= np.exp(-FLOOR) and got[0, :5].sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(got[3], want[3])


def test_rows_without_a_finite_maximum_give_what_they_gave():
    model = _softmax_model(17)
    x = np.zeros((2, 4), np.float32)
    x[0], x[1, 0] = -np.inf, np.inf
    want = session_run(model, x)
    assert floor_softmax(model) == 1
    np.testing.assert_array_equal(np.isnan(session_run(model, x)), np.isnan(want))


def session_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort  # noqa: PLC0415

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_an_old_opset_softmax_over_a_middle_axis_is_left_alone():
    """Before opset 13 Softmax flattens the axes from `axis` on: a ReduceMax over one axis is not its row."""
    model = _softmax_model(11, axis=0)
    assert floor_softmax(model) == 0 and [n.op_type for n in model.graph.node] == ["Softmax"]


def test_a_graph_without_softmax_is_not_rewritten(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    before = path.read_bytes()
    assert floor_softmax_file(path) == 0 and path.read_bytes() == before


@pytest.mark.parametrize("floor_parity, kept", [(0.0, True), (1.0, False)])
def test_export_keeps_the_floor_only_where_parity_holds(tmp_path, floor_parity, kept):
    """Masked self-attention exported: the floored file serves what torch computes; a failed check restores it."""
    torch.manual_seed(0)
    module = _Heads().eval()
    path = tmp_path / "m.onnx"
    calls = []

    def parity(p):
        floored = any(n.op_type == "ReduceMax" for n in onnx.load(str(p)).graph.node)
        calls.append(floored)
        return floor_parity if floored else 0.0

    onnx_export._export(module, (torch.randn(2, 5, 32), torch.ones(2, 5)), path, ["x", "valid"], ["y"],
                        {"x": {0: "batch", 1: "length"}, "valid": {0: "batch", 1: "length"}}, parity, floor=True)
    assert True in calls  # the floor was tried
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ("ReduceMax" in ops) == kept and "Softmax" in ops
    x = np.random.default_rng(1).normal(size=(3, 7, 32)).astype(np.float32)
    valid = np.ones((3, 7), np.float32)
    valid[0, :4] = 0.0
    with torch.no_grad():
        want = module(torch.from_numpy(x), torch.from_numpy(valid)).numpy()
    got = session(path).run(None, {"x": x, "valid": valid})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert _run(path, 2, 9).shape == (2, 9, 32)
