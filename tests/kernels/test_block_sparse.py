"""kernels.attention.block_sparse_attention, torch backends: "gather" (kernels/block_sparse_torch.py) against
"dense" (the torch reference), and the reference against plain SDPA where the layout is full."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from kernels import block_sparse_torch
from kernels._torch_refs import block_sparse_attention_ref
from kernels.attention import block_sparse_attention
from kernels.layout import BlockLayout

torch.set_num_threads(1)

dense = functools.partial(block_sparse_attention, backend="dense")
gather = functools.partial(block_sparse_attention, backend="gather")


def _random_layout(gen, b, h, q_len, kv_len, q_block, kv_block, density=0.5, empty_row=False):
    nqb, nkb = -(-q_len // q_block), -(-kv_len // kv_block)
    mask = torch.rand(b, h, nqb, nkb, generator=gen) < density
    if empty_row:
        mask[:, :, 0] = False  # a query block with no KV block at all
    return BlockLayout.from_block_mask(mask, q_block, kv_block, q_len, kv_len)


def _qkv(gen, b, h, q_len, kv_len, d, dtype=torch.float32):
    q = torch.randn(b, h, q_len, d, generator=gen).to(dtype)
    k = torch.randn(b, h, kv_len, d, generator=gen).to(dtype)
    v = torch.randn(b, h, kv_len, d, generator=gen).to(dtype)
    return q, k, v


@pytest.mark.parametrize("b,h,lh,q_len,kv_len,qb,kb,causal", [
    (2, 3, 1, 37, 37, 8, 8, True),     # odd length, layout shared by heads
    (1, 2, 2, 40, 40, 16, 8, True),    # per-head layout, q_block != kv_block
    (2, 2, 1, 5, 29, 8, 8, True),      # decode-like: queries are the last 5 of 29
    (1, 1, 1, 1, 1, 16, 16, True),     # single token
    (2, 2, 2, 23, 31, 8, 16, False),   # non-causal, q_len != kv_len
])
@pytest.mark.parametrize("chunk", [1 << 30, 64])  # one eager chunk, or one query block per chunk
def test_gather_matches_dense(b, h, lh, q_len, kv_len, qb, kb, causal, chunk, monkeypatch):
    monkeypatch.setattr(block_sparse_torch, "CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(q_len * 7 + kv_len)
    q, k, v = _qkv(gen, b, h, q_len, kv_len, 16)
    layout = _random_layout(gen, b, lh, q_len, kv_len, qb, kb, empty_row=q_len > qb)
    key_start = torch.randint(0, max(kv_len // 2, 1), (b, q_len), generator=gen)
    for ks in (None, key_start):
        ref = dense(q, k, v, layout, causal=causal, key_start=ks)
        out = gather(q, k, v, layout, causal=causal, key_start=ks)
        assert out.shape == q.shape and torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_empty_rows_are_zero():
    gen = torch.Generator().manual_seed(1)
    q, k, v = _qkv(gen, 1, 2, 20, 20, 8)
    layout = _random_layout(gen, 1, 1, 20, 20, 8, 8, density=1.0, empty_row=True)
    for fn in (dense, gather):
        out = fn(q, k, v, layout)
        assert torch.equal(out[:, :, :8], torch.zeros_like(out[:, :, :8]))
        assert out[:, :, 8:].abs().sum() > 0
        # key_start past the query masks every key: zeros again, no NaN
        out = fn(q, k, v, layout, key_start=torch.full((1, 20), 25))
        assert torch.equal(out, torch.zeros_like(out))


def test_full_layout_equals_sdpa():
    gen = torch.Generator().manual_seed(2)
    q, k, v = _qkv(gen, 2, 2, 27, 27, 16)
    layout = _random_layout(gen, 2, 1, 27, 27, 8, 8, density=1.0)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for fn in (dense, gather):
        torch.testing.assert_close(fn(q, k, v, layout), ref, atol=1e-5, rtol=1e-5)


def test_key_start_equals_explicit_mask():
    gen = torch.Generator().manual_seed(3)
    q, k, v = _qkv(gen, 1, 2, 19, 19, 8)
    layout = _random_layout(gen, 1, 1, 19, 19, 8, 8, density=1.0)
    ks = torch.randint(0, 19, (1, 19), generator=gen)
    pos = torch.arange(19)
    mask = (pos[None, :] <= pos[:, None]) & (pos[None, :] >= ks[0][:, None])
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref = torch.where(mask.any(-1)[:, None], ref, torch.zeros_like(ref))  # SDPA gives NaN on empty rows
    out = gather(q, k, v, layout, key_start=ks)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(dtype):
    gen = torch.Generator().manual_seed(4)
    q, k, v = _qkv(gen, 1, 2, 33, 33, 16)
    layout = _random_layout(gen, 1, 1, 33, 33, 16, 16)
    ref = dense(q, k, v, layout)
    out = gather(q.to(dtype), k.to(dtype), v.to(dtype), layout)
    assert out.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-6}[dtype]
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_gather_gradients_match_dense():
    gen = torch.Generator().manual_seed(5)
    base = _qkv(gen, 2, 2, 30, 30, 8)
    layout = _random_layout(gen, 2, 1, 30, 30, 8, 8)
    w = torch.randn(2, 2, 30, 8, generator=gen)
    grads = []
    for fn in (dense, gather):
        q, k, v = (t.clone().requires_grad_(True) for t in base)
        (fn(q, k, v, layout) * w).sum().backward()
        grads.append((q.grad, k.grad, v.grad))
    for g_ref, g in zip(*grads):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


def test_bad_inputs():
    gen = torch.Generator().manual_seed(6)
    q, k, v = _qkv(gen, 1, 2, 16, 16, 8)
    layout = _random_layout(gen, 1, 1, 16, 16, 8, 8)
    with pytest.raises(ValueError, match="layout is for"):
        gather(q[:, :, :8], k, v, layout)
    with pytest.raises(ValueError, match="layout batch/heads"):
        gather(q, k, v, _random_layout(gen, 1, 3, 16, 16, 8, 8))
    with pytest.raises(ValueError, match="key_start"):
        gather(q, k, v, layout, key_start=torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B,H,T,D\]"):
        dense(q[0], k, v, layout)
    with pytest.raises(ValueError, match="backend"):
        block_sparse_attention(q, k, v, layout, backend="torch")


def test_dense_backend_is_the_reference():
    # The dense backend is the one torch reference (also the Triton tests' oracle), behind the entry point's checks.
    gen = torch.Generator().manual_seed(7)
    q, k, v = _qkv(gen, 2, 2, 26, 26, 8)
    layout = _random_layout(gen, 2, 1, 26, 26, 8, 8, empty_row=True)
    ks = torch.randint(0, 13, (2, 26), generator=gen)
    for causal in (True, False):
        assert torch.equal(dense(q, k, v, layout, causal=causal, key_start=ks, sm_scale=0.5),
                           block_sparse_attention_ref(q, k, v, layout, causal=causal, key_start=ks, sm_scale=0.5))
    # kv_lens (decode): only the dense and triton backends take it; full lengths change nothing.
    full = torch.tensor([26, 26])
    assert torch.equal(dense(q, k, v, layout, kv_lens=full), dense(q, k, v, layout))
    with pytest.raises(ValueError, match="kv_lens must lie in"):
        dense(q, k, v, layout, kv_lens=torch.tensor([26, 27]))
