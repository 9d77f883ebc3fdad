"""Block-sparse attention over a `kernels.layout.BlockLayout` in plain torch: the "gather" backend of
`kernels.attention.block_sparse_attention` (call that; this module is its implementation).

For every query block it gathers only the KV blocks the layout lists (index_select on a flat block table), so
unselected blocks cost nothing, then runs one F.scaled_dot_product_attention over all (batch, query block)
tiles with an additive mask: torch's fused CPU kernel (fp32 for half inputs). Only ONNX-exportable ops (SDPA
exports as MatMul/Add/Softmax at opset 14+) and no Python control flow on data, so it traces with dynamic
sequence lengths. The output is a [B,H,Tq,D] view of [B,Tq,H,D] memory.

It follows the layout's element rules (causal with queries at the end of the KV sequence, keys past kv_len
never count, rows with no key give zeros) and the entry point's key_start rule

    key_start [B, Tq] or [B, H, Tq] (int): query i sees key j only if j >= key_start[..., i]

which expresses left padding (first real token) and "only the current journey" (the journey's first token)
and a token-exact sliding window without materialising a mask. The oracle is the torch reference
(kernels._torch_refs.block_sparse_attention_ref, backend "dense").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.layout import BlockLayout

_MASKED = -1e30  # finite: a fully masked row stays NaN-free and is zeroed afterwards (as the reference)


def _key_start_bh(key_start: torch.Tensor | None) -> torch.Tensor | None:
    """-> [B|1, H|1, Tq] int64."""
    if key_start is None:
        return None
    ks = key_start.long()
    return ks[:, None, :] if ks.dim() == 2 else ks


def gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, causal: bool = True,
                     sm_scale: float | None = None, key_start: torch.Tensor | None = None) -> torch.Tensor:
    """Visits only the listed KV blocks: q [B,H,Tq,D], k/v [B,H,Tk,D] -> [B,H,Tq,D] in q's dtype.

    Work is NQB x MAXB x q_block x kv_block per (batch, head), whatever the counts: padding entries of the
    index list are gathered (block 0) and masked, so the shapes never depend on data. Every query block
    becomes one SDPA batch entry: queries [B*NQB, H, q_block, D] against its gathered keys
    [B*NQB, H, MAXB*kv_block, D] with an additive mask built at the layout's (and key_start's) head count and
    broadcast over the heads, so torch's fused CPU kernel does scores, mask, softmax and PV in one pass
    (3-4x cheaper per score than separate ops). Masked entries get a finite -1e30, so a row with no key
    stays finite (uniform weights) and is zeroed afterwards. Inputs are checked by the entry point."""
    b, h, tq, d = q.shape
    tk = k.shape[2]
    qb, kb = layout.q_block, layout.kv_block
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    nqb = (tq + qb - 1) // qb
    nkb = (tk + kb - 1) // kb
    maxb = layout.kv_indices.shape[-1]
    width = maxb * kb
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    dev = q.device

    idx = layout.kv_indices.long()  # [Bl,Hl,NQB,MAXB]
    counts = layout.kv_num_blocks.long()  # [Bl,Hl,NQB]
    lb, lh = idx.shape[0], idx.shape[1]
    if lh == 1:
        # Layout shared by the heads: work in [B,T,H,D] order (free when q/k/v are head views of a [B,T,H*D]
        # projection): one row of the block table holds a block for every head, and SDPA reads the queries
        # and gathered keys through strided views, so nothing is transposed or copied per head.
        k_rows = _pad_len(k.transpose(1, 2).to(compute), nkb * kb - tk, 1).reshape(b * nkb, kb * h * d)
        v_rows = _pad_len(v.transpose(1, 2).to(compute), nkb * kb - tk, 1).reshape(b * nkb, kb * h * d)
        base = (torch.arange(b, device=dev) * nkb).reshape(b, 1, 1)
        flat = (idx[:, 0] + base).reshape(-1)  # [B*NQB*MAXB] in (batch, query block) order
        q_tiles = _pad_len(q.transpose(1, 2).to(compute), nqb * qb - tq, 1).reshape(b * nqb, qb, h, d)
    else:
        # Flat block table [(B*H*NKB), kb*D] (2-D: index_select copies whole rows, ~10x faster than on 3-D),
        # gathered in (batch, query block, head) order.
        k_rows = _pad_len(k.to(compute), nkb * kb - tk).reshape(b * h * nkb, kb * d)
        v_rows = _pad_len(v.to(compute), nkb * kb - tk).reshape(b * h * nkb, kb * d)
        base = (torch.arange(b * h, device=dev) * nkb).reshape(b, h, 1, 1)
        flat = (idx + base).transpose(1, 2).reshape(-1)  # broadcasts a batch-shared layout
        q_tiles = _pad_len(q.to(compute), nqb * qb - tq).reshape(b, h, nqb, qb, d).transpose(1, 2).reshape(b * nqb, h, qb, d)

    # Element rules at [B, NQB, Hl|H, qb, width] (key_start may add the heads).
    slot_ok = torch.arange(maxb, device=dev) < counts[..., None]  # [Bl,Hl,NQB,MAXB]
    key_pos = idx[..., None] * kb + torch.arange(kb, device=dev)  # [Bl,Hl,NQB,MAXB,kb]
    ok = (slot_ok[..., None] & (key_pos < tk)).reshape(lb, lh, nqb, 1, width)
    key_pos = key_pos.reshape(lb, lh, nqb, 1, width)
    if causal:
        q_pos = torch.arange(nqb, device=dev).reshape(nqb, 1, 1) * qb + torch.arange(qb, device=dev)[:, None]
        ok = ok & (key_pos <= q_pos + (tk - tq))
    ks = _key_start_bh(key_start)
    if ks is not None:
        ks = _pad_len(ks[..., None], nqb * qb - tq).reshape(ks.shape[0], ks.shape[1], nqb, qb, 1)
        ok = ok & (key_pos >= ks)
    ok = ok.transpose(1, 2)  # [Bl|B, NQB, Hl|H, qb, width]
    mh = ok.shape[2]
    ok = ok.expand(b, nqb, mh, qb, width).reshape(b * nqb, mh, qb, width)
    # A float max, not any(): ONNX has no ReduceAny, and torch exports any() as an int64 ReduceSum that ONNX
    # Runtime runs ~9x slower than this ReduceMax (~160 vs ~18 us per [4,1,64,128] mask, one thread).
    has_key = ok.to(compute).amax(-1, keepdim=True)
    zero = torch.zeros((), dtype=compute, device=dev)
    masked = torch.full((), _MASKED, dtype=compute, device=dev)

    def tiles(t0, t1):
        """Query tiles t0..t1 of the B*NQB (batch, query block) tiles -> [t1-t0, qb, H, D]."""
        rows = flat[t0 * maxb * (1 if lh == 1 else h):t1 * maxb * (1 if lh == 1 else h)]
        if lh == 1:
            kg = k_rows.index_select(0, rows).reshape(-1, width, h, d).transpose(1, 2)
            vg = v_rows.index_select(0, rows).reshape(-1, width, h, d).transpose(1, 2)
            qc = q_tiles[t0:t1].transpose(1, 2)
        else:
            kg = k_rows.index_select(0, rows).reshape(-1, h, width, d)
            vg = v_rows.index_select(0, rows).reshape(-1, h, width, d)
            qc = q_tiles[t0:t1]
        bias = torch.where(ok[t0:t1], zero, masked)
        out = F.scaled_dot_product_attention(qc, kg, vg, attn_mask=bias, scale=scale)  # [n,H,qb,D]
        return (out * has_key[t0:t1]).transpose(1, 2)  # rows with no key: zeros

    n_tiles = b * nqb
    if torch.jit.is_tracing() or needs_grad(q, k, v):  # backward of a chunk zero-fills whole-size grads
        out = tiles(0, n_tiles)
    else:  # chunks keep the temporaries small: big fresh buffers cost page faults on every call
        step = max(1, chunk_elements() // (h * qb * width))
        out = torch.cat([tiles(t0, min(t0 + step, n_tiles)) for t0 in range(0, n_tiles, step)], dim=0)
    # -> [B,H,Tq,D] as a view of [B,Tq,H,D] memory (what an output projection wants next)
    out = out.reshape(b, nqb * qb, h, d)[:, :tq].transpose(1, 2)
    return out.to(q.dtype)


CHUNK_ELEMENTS = 1 << 18  # scores per eager chunk (here and in models.grace.jsa's pooled branches)


def chunk_elements() -> int:
    """Scores per eager chunk. Multi-threaded: one chunk, as every extra op is another OpenMP fork/join, and
    on a busy machine each one waits for a preempted worker (measured: 2 threads, 4096 tokens, 16 chunks per
    branch made the JSA forward 4x slower than one chunk)."""
    return CHUNK_ELEMENTS if torch.get_num_threads() == 1 else 1 << 62


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _pad_len(x: torch.Tensor, amount, dim: int = -2) -> torch.Tensor:
    """Zero-pad dim -2 (or 1 of a 4-D tensor) at the end; no copy in eager mode when nothing is missing."""
    if not torch.jit.is_tracing() and amount == 0:
        return x
    return F.pad(x, (0, 0, 0, amount) if dim == -2 else (0, 0, 0, 0, 0, amount))
