"""models.grace.jsa: the backends agree, the module matches a per-query loop written from the branch rules, layouts
keep their invariants, padding does not change a history's output, gradients flow through the gather path,
and the gather backend exports to ONNX with a dynamic length."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.grace.jsa import BRANCHES, JourneySparseAttention, JSAConfig, count_attended_pairs
from evaluation.jsa_compute import journey_ids_for, main as jsa_compute_main

torch.set_num_threads(1)

SMALL = JSAConfig(block=8, compress_block=8, compress_stride=4, top_n=2, window=11, summaries_per_journey=2,
                  max_summarized_journeys=3, include_first_block=True, select_current_block=True)
LEAN = JSAConfig(block=8, compress_block=16, compress_stride=8, top_n=1, window=5, summaries_per_journey=1,
                 max_summarized_journeys=2, include_first_block=False, select_current_block=False)
D_MODEL, HEADS = 16, 2


def _journeys(lengths: list[int], pad: int) -> list[int]:
    ids = [-1] * pad
    for j, n in enumerate(lengths):
        ids += [j + 3] * n  # ids need not start at 0
    return ids


PATTERNS = {
    "several": [_journeys([9, 14, 5, 18], 0), _journeys([20, 9, 7], 10)],
    "odd_single": [_journeys([43], 0), _journeys([30], 13)],
    "tiny": [_journeys([1] * 37, 0), _journeys([2, 1, 3] * 8, 13)],
    "padding": [_journeys([6, 6], 29), _journeys([12, 12, 10, 7], 0)],
}


def _batch(rows: list[list[int]], seed: int = 0):
    t = max(len(r) for r in rows)
    jid = torch.tensor([[-1] * (t - len(r)) + r for r in rows])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(rows), t, D_MODEL, generator=gen)
    return x, jid, (jid >= 0).float()


def _module(cfg=SMALL, backend="gather", seed=0):
    torch.manual_seed(seed)
    return JourneySparseAttention(D_MODEL, HEADS, cfg, backend=backend).eval()


@pytest.fixture(params=["one_chunk", "small_chunks"])
def chunking(request, monkeypatch):
    """The eager gather path and pooled branches run in chunks (kernels.attention.chunk_elements, set by the
    gather backend's CHUNK_ELEMENTS): exercise one and several."""
    import kernels.block_sparse_torch as bst

    monkeypatch.setattr(bst, "CHUNK_ELEMENTS", 1 << 30 if request.param == "one_chunk" else 64)


@pytest.mark.parametrize("cfg", [SMALL, LEAN], ids=["small", "lean"])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_dense_and_gather_agree(pattern, cfg, chunking):
    x, jid, valid = _batch(PATTERNS[pattern], seed=len(pattern))
    model = _module(cfg)
    out_gather = model(x, jid, valid)
    model.backend = "dense"
    out_dense = model(x, jid, valid)
    assert torch.isfinite(out_gather).all()
    torch.testing.assert_close(out_gather, out_dense, atol=1e-5, rtol=1e-5)


def _naive_jsa(model: JourneySparseAttention, x, jid, valid):
    """Per-query loops over the branch rules of models/grace/jsa.py's docstring (end-aligned blocks)."""
    cfg, h, hd = model.cfg, model.heads, model.head_dim
    extra = (-x.shape[1]) % math.lcm(cfg.block, cfg.compress_stride)
    x = torch.nn.functional.pad(x, (0, 0, extra, 0))
    jid = torch.nn.functional.pad(jid, (extra, 0), value=-1)
    valid = torch.nn.functional.pad(valid, (extra, 0))
    b_size, t, _ = x.shape
    q = model.q(x).view(b_size, t, h, hd)
    k = model.k(x).view(b_size, t, h, hd)
    v = model.v(x).view(b_size, t, h, hd)
    gates = torch.sigmoid(model.gate(x)).view(b_size, t, h, len(BRANCHES))
    scale = 1 / math.sqrt(hd)
    out = torch.zeros(b_size, t, h, hd)

    def attend(i, keys, vals):  # keys/vals [n, h, hd]
        if len(keys) == 0:
            return torch.zeros(h, hd), None
        if isinstance(keys, list):
            keys, vals = torch.stack(keys), torch.stack(vals)
        p = torch.softmax(torch.einsum("hd,nhd->hn", q[b, i], keys) * scale, dim=-1)
        return torch.einsum("hn,nhd->hd", p, vals), p

    for b in range(b_size):
        real = [bool(valid[b, i] > 0.5 and jid[b, i] >= 0) for i in range(t)]
        pad = real.index(True)
        rank, start = [-1] * t, [0] * t
        bounds = []  # (start, end) of each journey
        for i in range(pad, t):
            if i == pad or jid[b, i] != jid[b, i - 1]:
                bounds.append([i, i])
            bounds[-1][1] = i
            rank[i], start[i] = len(bounds) - 1, bounds[-1][0]
        comp = []  # (first, end, k, v)
        for c in range(1 - cfg.compress_block // cfg.compress_stride, -(-t // cfg.compress_stride)):
            lo, hi = c * cfg.compress_stride, c * cfg.compress_stride + cfg.compress_block
            toks = [j for j in range(max(lo, 0), min(hi, t)) if real[j]]
            if toks:
                comp.append((lo, hi - 1, k[b, toks].mean(0), v[b, toks].mean(0)))
        oldest = max(len(bounds) - cfg.max_summarized_journeys, 0)
        summ = []  # (journey rank, k, v)
        for r in range(oldest, len(bounds)):
            s0, s1 = bounds[r]
            n = s1 - s0 + 1
            for part in range(cfg.summaries_per_journey):
                toks = [j for j in range(s0, s1 + 1) if (j - s0) * cfg.summaries_per_journey // n == part]
                if toks:
                    summ.append((r, k[b, toks].mean(0), v[b, toks].mean(0)))
        nb = t // cfg.block
        importance = torch.zeros(nb, nb)
        branch = torch.zeros(t, len(BRANCHES), h, hd)
        for i in range(pad, t):
            vis = [c for c in comp if c[1] < start[i]]
            o, p = attend(i, [c[2] for c in vis], [c[3] for c in vis])
            branch[i, 0] = o
            for ci, c in enumerate(vis):
                for n in range(nb):
                    ov = max(0, min(c[1] + 1, (n + 1) * cfg.block) - max(c[0], n * cfg.block))
                    importance[i // cfg.block, n] += float(p[:, ci].sum()) * ov
            vis = [s for s in summ if s[0] < rank[i]]
            branch[i, 2] = attend(i, [s[1] for s in vis], [s[2] for s in vis])[0]
            keys = range(max(start[i], i - cfg.window + 1), i + 1)
            branch[i, 3] = attend(i, k[b, list(keys)], v[b, list(keys)])[0]
        first = pad // cfg.block
        for qb in range(first, nb):
            cands = [n for n in range(first, qb) if importance[qb, n] > 0
                     and not (cfg.include_first_block and n == first)]
            chosen = sorted(cands, key=lambda n: -float(importance[qb, n]))[:cfg.top_n]
            chosen = set(chosen) | ({qb} if cfg.select_current_block else set())
            chosen |= {first} if cfg.include_first_block and first < qb else set()
            for i in range(max(qb * cfg.block, pad), (qb + 1) * cfg.block):
                keys = [j for j in range(pad, i + 1) if j // cfg.block in chosen]
                branch[i, 1] = attend(i, k[b, keys], v[b, keys])[0]
        out[b] = torch.einsum("thb,tbhd->thd", gates[b], branch)
    return model.o(out.reshape(b_size, t, h * hd))[:, extra:]


@pytest.mark.parametrize("cfg", [SMALL, LEAN], ids=["small", "lean"])
@pytest.mark.parametrize("pattern", ["several", "tiny", "padding"])
def test_matches_per_query_loops(pattern, cfg, chunking):
    x, jid, valid = _batch(PATTERNS[pattern], seed=3)
    model = _module(cfg, seed=1)
    with torch.no_grad():
        out = model(x, jid, valid)
        ref = _naive_jsa(model, x, jid, valid)
    real = valid.bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)


def test_layout_invariants():
    x, jid, valid = _batch(PATTERNS["several"] + PATTERNS["tiny"], seed=4)
    model = _module()
    _, plan = model(x, jid, valid, return_plan=True)
    cfg, t = model.cfg, plan.real.shape[1]
    extra = t - x.shape[1]
    jid_aligned = torch.nn.functional.pad(jid, (extra, 0), value=-1)
    pos = torch.arange(t)
    same_journey = jid_aligned[:, :, None] == jid_aligned[:, None, :]
    causal = pos[None, :] <= pos[:, None]
    for layout, ks, n_max in ((plan.selected, plan.selected_key_start, cfg.top_n + 2),
                              (plan.window, plan.window_key_start, cfg.window_blocks)):
        counts, idx = layout.kv_num_blocks, layout.kv_indices
        assert layout.kv_indices.shape[1] == 1 and int(counts.max()) <= n_max
        q_blk = torch.arange(counts.shape[-1])
        listed = torch.arange(idx.shape[-1]) < counts[..., None]
        assert bool((~listed | (idx <= q_blk[:, None])).all())  # never a future block
        ordered = (idx[..., 1:] > idx[..., :-1]) | ~listed[..., 1:]
        assert bool(ordered.all())  # ascending, no duplicate
        mask = layout.token_mask(causal=True)[:, 0] & (pos[None, None, :] >= ks[:, :, None])
        keys_real = plan.real[:, None, :] & plan.real[:, :, None]
        assert bool((~mask | (causal & keys_real)).all())  # causal, padding keys never seen
        if layout is plan.window or cfg.select_current_block:
            assert bool(mask[:, pos, pos][plan.real].all())  # every real query sees itself
    win = plan.window.token_mask(causal=True)[:, 0] & (pos[None, None, :] >= plan.window_key_start[:, :, None])
    assert bool((~win | same_journey).all())
    assert bool((~win | (pos[:, None] - pos[None, :] < cfg.window)).all())
    # the window is exactly the last `window` tokens of the journey
    expected = same_journey & causal & (pos[:, None] - pos[None, :] < cfg.window) & plan.real[:, :, None]
    assert torch.equal(win, expected)
    stats = count_attended_pairs(plan)
    for name in BRANCHES:
        assert 0 < stats[name]["attended"] <= stats[name]["tiles"] <= stats[name]["gather"]


def test_padding_does_not_change_a_history():
    rows = [_journeys([9, 14, 5, 18], 0)]
    x, jid, valid = _batch(rows, seed=5)
    model = _module()
    ref = model(x, jid, valid)
    for pad in (1, 7, 13):
        xp = torch.cat([torch.randn(1, pad, D_MODEL), x], dim=1)  # padding content must not matter
        jp = torch.cat([torch.full((1, pad), -1), jid], dim=1)
        vp = torch.cat([torch.zeros(1, pad), valid], dim=1)
        out = model(xp, jp, vp)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[:, pad:], ref, atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_gather():
    x, jid, valid = _batch(PATTERNS["several"], seed=6)
    x.requires_grad_(True)
    grads = {}
    for backend in ("gather", "dense"):
        model = _module(backend=backend).train()
        x.grad = None
        (model(x, jid, valid) * valid[..., None]).square().sum().backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()} | {"x": x.grad.clone()}
    for name, g in grads["gather"].items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
        torch.testing.assert_close(g, grads["dense"][name], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 5e-3)])
def test_half_precision_close_to_fp32(dtype, tol):
    x, jid, valid = _batch(PATTERNS["padding"], seed=10)
    model = _module()
    ref = model(x, jid, valid)
    out = model.to(dtype)(x.to(dtype), jid, valid)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_short_history_and_config_errors():
    model = _module(JSAConfig())  # defaults on a 5-token history: blocks larger than the history
    x, jid, valid = _batch([[0, 0, 0, 1, 1]], seed=7)
    out = JourneySparseAttention(D_MODEL, HEADS, JSAConfig())(x, jid, valid)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="compress_block"):
        JSAConfig(compress_block=24, compress_stride=16)
    with pytest.raises(ValueError, match="top_n"):
        JSAConfig(top_n=0)
    with pytest.raises(ValueError, match="backend"):
        JourneySparseAttention(D_MODEL, HEADS, backend="flash")
    with pytest.raises(ValueError, match="left"):
        model(x, torch.tensor([[0, 0, -1, 1, 1]]), valid)
    with pytest.raises(ValueError, match="nondecreasing"):
        model(x, torch.tensor([[0, 1, 0, 1, 1]]), valid)
    with pytest.raises(ValueError, match=r"\[B,T\]"):
        model(x, jid[:, :4], valid)


_TRITON_SCRIPT = """
import torch
torch.set_num_threads(1)
from models.grace.jsa import JourneySparseAttention, JSAConfig
cfg = JSAConfig(block=16, compress_block=16, compress_stride=8, top_n=2, window=20, max_summarized_journeys=3,
                include_first_block=True, select_current_block=True)
jid = torch.tensor([[-1] * 5 + [0] * 9 + [1] * 14 + [2] * 12, [0] * 7 + [1] * 20 + [2] * 5 + [3] * 8])
valid = (jid >= 0).float()
x0 = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(0))
res = {}
for backend in ("gather", "triton"):
    torch.manual_seed(0)
    model = JourneySparseAttention(32, 2, cfg, backend=backend)
    x = x0.clone().requires_grad_(True)
    out = model(x, jid, valid)
    (out * valid[..., None]).square().sum().backward()
    res[backend] = (out.detach(), x.grad)
for a, b in zip(res["gather"], res["triton"]):
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
print("ok")
"""


def test_triton_backend_matches_gather_in_interpreter():
    """The Triton kernel (CPU interpreter, in a fresh process so TRITON_INTERPRET cannot leak) forward and
    backward against the gather backend."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[3]  # the repository root
    run = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], cwd=root, env=env, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout[-2000:] + run.stderr[-4000:]


def test_triton_backend_refuses_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, jid, valid = _batch(PATTERNS["several"])
    with pytest.raises(RuntimeError, match="gather"):
        _module(backend="triton")(x, jid, valid)


class _EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.attn = JourneySparseAttention(D_MODEL, HEADS, SMALL, backend="gather")
        self.ff = nn.Sequential(nn.Linear(D_MODEL, 2 * D_MODEL), nn.GELU(), nn.Linear(2 * D_MODEL, D_MODEL))

    def forward(self, x, journey_ids, valid):
        x = x + self.attn(self.norm1(x), journey_ids, valid)
        return x + self.ff(self.norm2(x))


def test_onnx_export_dynamic_length(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    layer = _EncoderLayer().eval()
    x, jid, valid = _batch(PATTERNS["several"], seed=8)
    path = tmp_path / "jsa_layer.onnx"
    torch.onnx.export(layer, (x, jid, valid), str(path), dynamo=False, opset_version=17,
                      input_names=["x", "journey_ids", "valid"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "t"}, "journey_ids": {0: "b", 1: "t"},
                                    "valid": {0: "b", 1: "t"}, "y": {0: "b", 1: "t"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for rows in (PATTERNS["tiny"], PATTERNS["padding"] + PATTERNS["odd_single"], [_journeys([3, 4], 0)]):
        x, jid, valid = _batch(rows, seed=9)
        with torch.no_grad():
            ref = layer(x, jid, valid).numpy()
        got = sess.run(None, {"x": x.numpy(), "journey_ids": jid.numpy(), "valid": valid.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


ONE_BLOCK = JSAConfig(block=16, compress_block=16, compress_stride=16, top_n=2, window=16, summaries_per_journey=2,
                      max_summarized_journeys=3)
ONE_BLOCK_PATTERNS = [[_journeys([3, 5, 1, 4], 0), _journeys([6, 2], 5)], [_journeys([16], 0), _journeys([1] * 9, 7)],
                      [_journeys([2, 2, 2, 2, 2, 2, 2, 2], 0)]]


def _one_block_pair(cfg, max_length, seed=0):
    four = _module(cfg, seed=seed)
    one = JourneySparseAttention(D_MODEL, HEADS, cfg, backend="gather", max_length=max_length).eval()
    one.load_state_dict(four.state_dict())
    return four, one


@pytest.mark.parametrize("cfg", [ONE_BLOCK, JSAConfig()], ids=["block16", "default"])
@pytest.mark.parametrize("rows", range(len(ONE_BLOCK_PATTERNS)))
def test_one_block_form_matches_the_four_branch_form(cfg, rows):
    """A module whose inputs fit one block (its max_length) runs two branches; every output row, padding
    included, equals the four-branch form's and the per-query loops' (the oracle)."""
    four, one = _one_block_pair(cfg, ONE_BLOCK.block)
    assert one.one_block and not four.one_block
    x, jid, valid = _batch(ONE_BLOCK_PATTERNS[rows], seed=rows)
    with torch.no_grad():
        got, want, oracle = one(x, jid, valid), four(x, jid, valid), _naive_jsa(four, x, jid, valid)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[valid.bool()], oracle[valid.bool()], atol=1e-5, rtol=1e-5)


def test_one_block_form_only_where_it_is_the_same_function():
    """Beyond one block, a shorter window, or a forced block (the first real one, the current one) the other
    branches attend to something: those keep the four-branch form, and a longer input is refused."""
    assert JourneySparseAttention(D_MODEL, HEADS, ONE_BLOCK, max_length=16).one_block
    assert not JourneySparseAttention(D_MODEL, HEADS, ONE_BLOCK, max_length=17).one_block
    assert not JourneySparseAttention(D_MODEL, HEADS, LEAN, max_length=8).one_block  # window 5
    assert not JourneySparseAttention(D_MODEL, HEADS, SMALL, max_length=4).one_block  # forced blocks
    _, one = _one_block_pair(ONE_BLOCK, 16)
    x, jid, valid = _batch([_journeys([20], 0)])
    with pytest.raises(ValueError, match="at most 16"):
        one(x, jid, valid)


def test_one_block_form_exports_fewer_kernels(tmp_path):
    """The ONNX export of a module whose inputs fit one block holds only the two-branch form: fewer nodes than
    the four-branch export, the same outputs at every length up to max_length."""
    import onnx
    import onnxruntime as ort

    four, one = _one_block_pair(ONE_BLOCK, 16, seed=2)
    nodes = {}
    for name, module in (("four", four), ("one", one)):
        x, jid, valid = _batch(ONE_BLOCK_PATTERNS[0], seed=8)
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(module, (x, jid, valid), str(path), dynamo=False, opset_version=17,
                          input_names=["x", "journey_ids", "valid"], output_names=["y"],
                          dynamic_axes={n: {0: "b", 1: "t"} for n in ("x", "journey_ids", "valid", "y")})
        nodes[name] = len(onnx.load(str(path)).graph.node)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for i, rows in enumerate(ONE_BLOCK_PATTERNS):
            x, jid, valid = _batch(rows, seed=10 + i)
            with torch.no_grad():
                ref = four(x, jid, valid).numpy()  # the four-branch form in eager mode
            got = sess.run(None, {"x": x.numpy(), "journey_ids": jid.numpy(), "valid": valid.numpy()})[0]
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert nodes["one"] < 0.6 * nodes["four"], nodes


def test_compute_report_smoke(tmp_path):
    jid = journey_ids_for(100, 2, tokens_per_event=9, events_per_journey=(3, 8), seed=0)
    assert jid.shape == (2, 100) and bool((jid[:, 1:] >= jid[:, :-1]).all()) and int(jid.min()) == 0
    rows = jsa_compute_main(["--lengths", "100", "--repeats", "1", "--warmup", "0", "--threads", "1",
                             "--train-batch", "2", "--train-length", "40", "--train-min-len", "20",
                             "--out", str(tmp_path)])
    assert len(rows) == 1 and 0 < rows[0]["ratio_attended"] and rows[0]["jsa_ms_median"] > 0
    md = (tmp_path / "jsa_compute.md").read_text()
    assert (tmp_path / "jsa_compute.csv").is_file() and "| 100 | 1 |" in md and "| JSA gather |" in md
    with pytest.raises(ValueError, match="threads"):
        jsa_compute_main(["--threads", "0", "--out", str(tmp_path)])
