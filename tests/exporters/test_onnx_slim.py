"""exporters.onnx_slim folds traced shape arithmetic into constants without changing what the graph computes,
and the exporters keep a folded file only when it passes parity (else the file as torch exported it)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exporters import onnx_export
from exporters.onnx_slim import slim_file
from serving.ort import session


class _Heads(nn.Module):
    """Multi-head self-attention written as the models write it: view with sizes read from the input."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.qkv, self.out, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

    def forward(self, x, valid):
        b, t, d = x.shape
        q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in self.qkv(x).chunk(3, -1))
        bias = ((1.0 - valid) * -1e9)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def _export(tmp_path, module):
    path = tmp_path / "heads.onnx"
    x, valid = torch.randn(2, 5, 32), torch.ones(2, 5)
    torch.onnx.export(module.eval(), (x, valid), str(path), input_names=["x", "valid"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch", 1: "length"}, "valid": {0: "batch", 1: "length"},
                                    "y": {0: "batch", 1: "length"}}, opset_version=17, dynamo=False)
    return path


def _run(path, b, t, seed=0):
    rng = np.random.default_rng(seed)
    valid = np.ones((b, t), np.float32)
    valid[0, : t // 2] = 0.0
    return session(path).run(None, {"x": rng.normal(size=(b, t, 32)).astype(np.float32), "valid": valid})[0]


def test_folding_keeps_the_function_and_drops_the_shape_arithmetic(tmp_path):
    torch.manual_seed(0)
    path = _export(tmp_path, _Heads())
    before = {(b, t): _run(path, b, t) for b, t in ((1, 1), (3, 7), (2, 16))}
    ops_before = [n.op_type for n in onnx.load(str(path)).graph.node]
    stats = slim_file(path)
    assert stats is not None and stats["nodes_after"] < stats["nodes_before"] and stats["constant_reshapes"] >= 2
    ops_after = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops_after.count("Shape") < ops_before.count("Shape") and ops_after.count("Concat") < ops_before.count("Concat")
    for (b, t), expected in before.items():
        np.testing.assert_allclose(_run(path, b, t), expected, atol=1e-6)


def test_an_unreadable_graph_is_left_as_exported(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx file")
    with pytest.raises(Exception):
        slim_file(path)  # loading fails loudly: only the inference's own failures are tolerated
    torch.manual_seed(0)
    good = _export(tmp_path, _Heads())
    exported = good.read_bytes()

    def failing(*args, **kwargs):
        raise RuntimeError("inference gave up")

    import exporters.onnx_slim as slim  # noqa: PLC0415

    original = slim._infer
    slim._infer = failing
    try:
        assert slim_file(good) is None
    finally:
        slim._infer = original
    assert good.read_bytes() == exported


@pytest.mark.parametrize("failing_tries, kept", [(0, "merged"), (1, "strict"), (3, "exported")])
def test_export_keeps_the_first_fold_that_passes_parity(tmp_path, failing_tries, kept):
    """_export tries merged axes, then strict, then the plain export, by the caller's parity."""
    torch.manual_seed(0)
    module = _Heads().eval()
    path = tmp_path / "m.onnx"
    calls = []

    def parity(p):
        calls.append(len(onnx.load(str(p)).graph.node))
        return 1.0 if len(calls) <= failing_tries else 0.0

    diff = onnx_export._export(module, (torch.randn(2, 5, 32), torch.ones(2, 5)), path, ["x", "valid"], ["y"],
                               {"x": {0: "batch", 1: "length"}, "valid": {0: "batch", 1: "length"}}, parity)
    nodes = len(onnx.load(str(path)).graph.node)
    if kept == "exported":
        assert diff == 1.0 and len(calls) == 3 and nodes == calls[-1] > calls[0]  # restored, then checked
    else:
        assert diff == 0.0 and len(calls) == failing_tries + 1 and nodes == calls[-1] < calls[0] + 100


class _Grouped(nn.Module):
    """The decoder step's grouped cross-attention shapes: rows [B, d] in R groups against R memories [R, M, d]."""

    def forward(self, rows, memory):
        r, m, d = memory.shape
        scores = rows.reshape(r, -1, d) @ memory.transpose(1, 2)  # [R, B/R, M]
        return scores.reshape(rows.shape[0], m)


def test_an_axis_is_copied_only_where_it_is_the_same_axis(tmp_path):
    path = tmp_path / "grouped.onnx"
    torch.onnx.export(_Grouped(), (torch.randn(6, 8), torch.randn(2, 5, 8)), str(path), input_names=["rows", "memory"],
                      output_names=["scores"], dynamic_axes={"rows": {0: "rows"}, "memory": {0: "groups", 1: "m"}},
                      opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    cases = [(rng.normal(size=(b, 8)).astype(np.float32), rng.normal(size=(r, m, 8)).astype(np.float32))
             for b, r, m in ((6, 2, 5), (12, 3, 4), (4, 4, 7), (5, 1, 3))]
    expected = [session(path).run(None, {"rows": x, "memory": mem})[0] for x, mem in cases]
    assert slim_file(path) is not None  # strict: rows and groups stay two axes
    for (x, mem), e in zip(cases, expected):
        np.testing.assert_allclose(session(path).run(None, {"rows": x, "memory": mem})[0], e, atol=1e-5)
