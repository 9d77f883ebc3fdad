"""Block-sparse attention entry point (kernels.attention.block_sparse_attention): the Triton backend (CPU
interpreter) against the torch reference, and the backends against each other.

Interpreter isolation (TRITON_INTERPRET set before triton's first import, per test only): tests/kernels/_interpret.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kernels._torch_refs import block_sparse_attention_ref as ref_attention
from kernels.attention import block_sparse_attention
from kernels.jsa_attention import use_triton
from kernels.layout import BlockLayout
from tests.kernels._interpret import ROOT, interpreter_fixture, rerun_in_fresh_process

# Stated per dtype: fp32 exact dots; fp16/bf16 inputs are rounded, accumulation is fp32 in both.
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}

interpreter = interpreter_fixture("test_kernels_compile_for_sm90")


def test_in_fresh_process():
    rerun_in_fresh_process(__file__)


def _qkv(b, h, tq, tk, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g).to(dtype) for t in (tq, tk, tk))
    return q, k, v


def _random_layout(b, h, tq, tk, qb, kvb, seed, density=0.6, empty_row=True):
    g = torch.Generator().manual_seed(seed)
    nqb, nkb = -(-tq // qb), -(-tk // kvb)
    mask = torch.rand(b, h, nqb, nkb, generator=g) < density
    if empty_row:
        mask[0, 0, 0] = False  # a query block that visits nothing -> zeros
    return BlockLayout.from_block_mask(mask, qb, kvb, tq, tk)


def _journeys_layout(t, blk, bounds):
    """Block-diagonal-causal layout: each journey (a run of blocks) sees only its own blocks, plus block 0."""
    nb = -(-t // blk)
    mask = torch.zeros(1, 1, nb, nb, dtype=torch.bool)
    for lo, hi in bounds:
        mask[0, 0, lo:hi, lo:hi] = True
    mask[..., 0] = True
    return BlockLayout.from_block_mask(mask, blk, blk, t, t)


def _close(out, ref, dtype):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.isfinite(out.float()).all()
    err = (out.float() - ref.float()).abs().max().item() if out.numel() else 0.0
    assert err <= TOL[dtype], f"max abs err {err} > {TOL[dtype]}"


@pytest.mark.parametrize("tq,tk,heads_layout,causal", [
    (1, 1, 1, True),      # single token
    (50, 50, 2, True),    # odd length, not a multiple of the block; per-head layouts
    (37, 83, 1, True),    # queries are the last 37 of 83 positions; shared layout
    (64, 64, 2, False),   # exact multiple, non-causal
])
def test_padded_fp32_matches_reference(tq, tk, heads_layout, causal):
    q, k, v = _qkv(2, 2, tq, tk, 16, torch.float32, seed=tq + tk)
    layout = _random_layout(2, heads_layout, tq, tk, 16, 16, seed=tq)
    out = block_sparse_attention(q, k, v, layout, causal=causal)
    _close(out, ref_attention(q, k, v, layout, causal=causal), torch.float32)
    if tq > 1:
        assert (out[0, 0, :16] == 0).all()  # the empty query block


def test_full_causal_layout_equals_sdpa():
    # Independent oracle: every block listed + causal == plain causal attention.
    q, k, v = _qkv(1, 2, 45, 45, 32, torch.float32, seed=3)
    layout = BlockLayout.from_block_mask(torch.ones(1, 1, 3, 3, dtype=torch.bool), 16, 16, 45, 45)
    out = block_sparse_attention(q, k, v, layout, causal=True, sm_scale=0.3)
    _close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3), torch.float32)


def test_empty_layout_gives_zeros():
    q, k, v = _qkv(1, 1, 20, 20, 16, torch.float32, seed=4)
    layout = BlockLayout.from_block_mask(torch.zeros(1, 1, 2, 2, dtype=torch.bool), 16, 16, 20, 20)
    out = block_sparse_attention(q, k, v, layout)
    assert torch.equal(out, torch.zeros_like(out))


def test_several_journeys_and_subtiles():
    t = 100
    q, k, v = _qkv(1, 2, t, t, 16, torch.float32, seed=5)
    layout = _journeys_layout(t, 16, [(0, 2), (2, 5), (5, 7)])
    ref = ref_attention(q, k, v, layout)
    _close(block_sparse_attention(q, k, v, layout), ref, torch.float32)
    # 32-wide layout blocks covered by 16x16 kernel tiles (the sub-tiling used by the GPU autotuner).
    layout32 = _journeys_layout(t, 32, [(0, 1), (1, 4)])
    out = block_sparse_attention(q, k, v, layout32, backend="triton", tiles=(16, 16))
    _close(out, ref_attention(q, k, v, layout32), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype):
    # bf16: the kernel upcasts tiles to fp32 before tl.dot off CUDA (triton 3.9 interpreter bf16 dot is wrong).
    q, k, v = _qkv(1, 2, 70, 70, 32, dtype, seed=6)
    layout = _random_layout(1, 2, 70, 70, 32, 32, seed=6)
    out = block_sparse_attention(q, k, v, layout)
    _close(out, ref_attention(q, k, v, layout), dtype)


def test_jagged_batch():
    lens_q = [1, 40, 0, 17]
    lens_k = [1, 40, 3, 29]
    h, d = 2, 16
    g = torch.Generator().manual_seed(7)
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(lens_q), h, d, generator=g)
    k = torch.randn(sum(lens_k), h, d, generator=g)
    v = torch.randn(sum(lens_k), h, d, generator=g)
    layout = _random_layout(4, h, 40, 40, 16, 16, seed=7, density=0.7, empty_row=False)
    out = block_sparse_attention(q, k, v, layout, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    _close(out, ref_attention(q, k, v, layout, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k), torch.float32)
    # A full layout must equal causal attention per sequence, each on its own.
    full = BlockLayout.from_block_mask(torch.ones(1, 1, 3, 3, dtype=torch.bool), 16, 16, 40, 40)
    out = block_sparse_attention(q, k, v, full, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    for i in (1, 3):
        qs = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)
        ks, vs = (t[cu_k[i]:cu_k[i + 1]].transpose(0, 1) for t in (k, v))
        mask = torch.ones(lens_q[i], lens_k[i], dtype=torch.bool).tril(lens_k[i] - lens_q[i])
        ref = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(0, 1)
        _close(out[cu_q[i]:cu_q[i + 1]], ref, torch.float32)


def test_key_start_matches_dense_and_gather():
    # key_start (journey start / left padding per query), checked against the dense oracle and the gather path.
    q, k, v = _qkv(2, 2, 50, 50, 16, torch.float32, seed=12)
    layout = _random_layout(2, 1, 50, 50, 16, 16, seed=12, density=0.8)
    g = torch.Generator().manual_seed(12)
    ks2 = torch.randint(0, 30, (2, 50), generator=g)
    ks3 = torch.randint(0, 30, (2, 2, 50), generator=g)
    for ks in (ks2, ks3):
        out = block_sparse_attention(q, k, v, layout, key_start=ks)
        _close(out, block_sparse_attention(q, k, v, layout, key_start=ks, backend="dense"), torch.float32)
        _close(out, block_sparse_attention(q, k, v, layout, key_start=ks, backend="gather"), torch.float32)


def test_jagged_key_start_and_shared_layout():
    lens = [33, 9]
    h, d = 2, 16
    g = torch.Generator().manual_seed(13)
    cu = torch.tensor([0, 33, 42])
    q, k, v = (torch.randn(42, h, d, generator=g) for _ in range(3))
    ks = torch.cat([torch.randint(0, n, (n, h), generator=g) for n in lens])
    layout = _random_layout(1, 1, 33, 33, 16, 16, seed=13, density=0.8, empty_row=False)
    out = block_sparse_attention(q, k, v, layout, cu_seqlens_q=cu, cu_seqlens_k=cu, key_start=ks)
    _close(out, ref_attention(q, k, v, layout, key_start=ks, cu_seqlens_q=cu, cu_seqlens_k=cu), torch.float32)


@pytest.mark.parametrize("tq", [1, 3])
def test_decode_against_cache(tq):
    b, h, tmax, d = 3, 2, 64, 16
    q, kc, vc = _qkv(b, h, tq, tmax, d, torch.float32, seed=8 + tq)
    cache_lens = torch.tensor([tq, 33, 64])
    mask = torch.ones(b, 1, 1, 4, dtype=torch.bool)
    mask[1, 0, 0, 0] = False  # a sequence whose layout skips its first block
    layout = BlockLayout.from_block_mask(mask, 16, 16, tq, tmax)
    out = block_sparse_attention(q, kc, vc, layout, kv_lens=cache_lens)
    _close(out, ref_attention(q, kc, vc, layout, kv_lens=cache_lens), torch.float32)
    # Sequence 0 with everything visible is plain causal attention over its valid cache.
    n = int(cache_lens[2])
    ref2 = F.scaled_dot_product_attention(q[2:], kc[2:, :, :n], vc[2:, :, :n],
                                          attn_mask=torch.ones(tq, n, dtype=torch.bool).tril(n - tq))
    _close(out[2:], ref2, torch.float32)


@pytest.mark.parametrize("dtype,causal,with_key_start,block", [
    (torch.float32, True, False, 16),
    (torch.float32, False, True, 32),   # 32-wide layout blocks run as 16x16 sub-tiles in both kernels
    (torch.float16, True, True, 16),
])
def test_backward_matches_autograd_of_reference(dtype, causal, with_key_start, block):
    g = torch.Generator().manual_seed(14)
    t = 45
    q, k, v = (torch.randn(1, 2, t, 16, generator=g).to(dtype).requires_grad_() for _ in range(3))
    layout = _random_layout(1, 1, t, t, block, block, seed=14, density=0.7)  # with an empty query block
    ks = torch.randint(0, 20, (1, t), generator=g) if with_key_start else None
    dout = torch.randn(1, 2, t, 16, generator=g).to(dtype)
    tiles = (16, 16) if block == 32 else None
    out = block_sparse_attention(q, k, v, layout, causal=causal, key_start=ks, backend="triton", tiles=tiles)
    out.backward(dout)
    grads = [x.grad for x in (q, k, v)]
    leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = ref_attention(*leaves, layout, causal=causal, key_start=ks)
    ref.backward(dout.float())
    _close(out, ref.to(dtype), dtype)
    for got, leaf in zip(grads, leaves):
        _close(got, leaf.grad.to(dtype), dtype)
    # backend="auto" routes to the same autograd function when gradients are needed.
    for x in (q, k, v):
        x.grad = None
    block_sparse_attention(q, k, v, layout, causal=causal, key_start=ks).backward(dout)
    assert torch.equal(q.grad, grads[0])


@pytest.mark.parametrize("tq,tk,heads_layout,causal,with_key_start", [
    (50, 50, 1, True, True),     # shared layout, odd length, per-query first key
    (37, 83, 2, True, False),    # per-head layouts, queries are the last 37 of 83
    (48, 48, 2, False, True),    # non-causal
])
def test_entry_point_backends_agree(tq, tk, heads_layout, causal, with_key_start):
    # One entry point, three backends: dense (the reference), gather, triton (interpreter); "auto" is triton here.
    q, k, v = _qkv(2, 2, tq, tk, 16, torch.float32, seed=20 + tq)
    layout = _random_layout(2, heads_layout, tq, tk, 16, 16, seed=20 + tk, density=0.7)
    g = torch.Generator().manual_seed(tq)
    ks = torch.randint(0, tk // 2, (2, 2, tq), generator=g) if with_key_start else None
    outs = {b: block_sparse_attention(q, k, v, layout, key_start=ks, causal=causal, sm_scale=0.2, backend=b)
            for b in ("dense", "gather", "triton", "auto")}
    assert torch.equal(outs["dense"], ref_attention(q, k, v, layout, causal=causal, sm_scale=0.2, key_start=ks))
    assert torch.equal(outs["auto"], outs["triton"])
    for b in ("gather", "triton"):
        _close(outs[b], outs["dense"], torch.float32)
    # Decode (kv_lens) and jagged forms: triton against dense; gather takes neither.
    lens = torch.tensor([tq, tk])
    _close(block_sparse_attention(q, k, v, layout, kv_lens=lens, causal=causal, backend="triton"),
           block_sparse_attention(q, k, v, layout, kv_lens=lens, causal=causal, backend="dense"), torch.float32)
    cu_q = torch.tensor([0, tq, 2 * tq])
    cu_k = torch.tensor([0, tk, 2 * tk])
    qp, kp, vp = (t.transpose(1, 2).reshape(-1, 2, 16) for t in (q, k, v))
    jag = {b: block_sparse_attention(qp, kp, vp, layout, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal,
                                     backend=b) for b in ("dense", "triton")}
    _close(jag["triton"], jag["dense"], torch.float32)
    # Equal lengths: the jagged form is the padded one, repacked.
    _close(jag["dense"], block_sparse_attention(q, k, v, layout, causal=causal, backend="dense")
           .transpose(1, 2).reshape(-1, 2, 16), torch.float32)
    with pytest.raises(ValueError, match="gather"):
        block_sparse_attention(q, k, v, layout, kv_lens=lens, backend="gather")
    with pytest.raises(ValueError, match="gather"):
        block_sparse_attention(qp, kp, vp, layout, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend="gather")
    with pytest.raises(ValueError, match="cu_seqlens"):
        block_sparse_attention(qp, kp, vp, layout, cu_seqlens_q=cu_q)


def test_bad_input_raises():
    q, k, v = _qkv(1, 1, 20, 20, 16, torch.float32, seed=9)
    odd = BlockLayout.from_block_mask(torch.ones(1, 1, 1, 1, dtype=torch.bool), 24, 24, 20, 20)
    with pytest.raises(ValueError, match="q_block"):
        block_sparse_attention(q, k, v, odd)
    good = BlockLayout.from_block_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool), 16, 16, 20, 20)
    with pytest.raises(ValueError, match="dtype"):
        block_sparse_attention(q, k.half(), v, good)
    with pytest.raises(ValueError, match="layout covers"):
        block_sparse_attention(q[:, :, :17], k, v, good)
    with pytest.raises(ValueError, match="dtype must be"):
        block_sparse_attention(q.double(), k.double(), v.double(), good)
    with pytest.raises(ValueError, match="cache_lens|kv_lens"):
        block_sparse_attention(q, k, v, good, kv_lens=torch.tensor([5]))
    with pytest.raises(ValueError, match="backend"):
        block_sparse_attention(q, k, v, good, backend="cuda")
    bad_count = BlockLayout(torch.full((1, 1, 2), 3, dtype=torch.int32), torch.zeros(1, 1, 2, 2, dtype=torch.int32),
                            16, 16, 20, 20)
    with pytest.raises(ValueError, match="exceeds kv_indices width"):
        block_sparse_attention(q, k, v, bad_count)
    with pytest.raises(ValueError, match="key_start"):
        block_sparse_attention(q, k, v, good, key_start=torch.zeros(1, 19, dtype=torch.long))


def test_cpu_without_interpreter_falls_back_to_torch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv(1, 2, 30, 30, 16, torch.float32, seed=10)
    layout = _random_layout(1, 1, 30, 30, 16, 16, seed=10)
    assert not use_triton(q, k, v)
    out = block_sparse_attention(q, k, v, layout)
    assert torch.equal(out, ref_attention(q, k, v, layout))


def test_kernels_compile_for_sm90():
    # The CPU tests only run the interpreter; this compiles the real GPU path (forward fp16, bf16 + key_start,
    # backward dQ and dK/dV, CLIP head, top-k) to sm_90 machine code with the ptxas in the triton wheel, in a
    # fresh process in compiled mode.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels.bench", "--compile-only", "90"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(": ok in") == 6, proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: the compiled GPU kernel "
                    "(autotuned tiles) is only exercised on a CUDA machine")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_kernel(dtype):
    q, k, v = (t.cuda() for t in _qkv(2, 4, 300, 300, 64, dtype, seed=11))
    layout = _random_layout(2, 1, 300, 300, 64, 64, seed=11)
    out = block_sparse_attention(q, k, v, layout)
    ref = ref_attention(q, k, v, layout)
    _close(out, ref, dtype)
    ks = torch.randint(0, 100, (2, 300), device="cuda")
    _close(block_sparse_attention(q, k, v, layout, key_start=ks),
           ref_attention(q, k, v, layout, key_start=ks), dtype)
    # Decode: 4 beams' new tokens against a cache of 300 with different valid lengths.
    lay = BlockLayout.from_block_mask(torch.ones(2, 1, 1, 5, dtype=torch.bool), 64, 64, 4, 300)
    lens = torch.tensor([150, 300], device="cuda")
    _close(block_sparse_attention(q[:, :, :4], k, v, lay, kv_lens=lens),
           ref_attention(q[:, :, :4], k, v, lay, kv_lens=lens), dtype)
    # Backward kernels against autograd through the reference.
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    dout = torch.randn_like(q)
    block_sparse_attention(*leaves, layout, key_start=ks).backward(dout)
    ref_leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref_attention(*ref_leaves, layout, key_start=ks).backward(dout.float())
    for got, ref_leaf in zip(leaves, ref_leaves):
        err = (got.grad.float() - ref_leaf.grad).abs().max().item()
        assert err <= 8 * TOL[dtype], err  # gradients sum over up to 300 keys/queries: looser than the output
