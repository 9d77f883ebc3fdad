"""Block-sparse attention over a `kernels.layout.BlockLayout`: the one entry point, `block_sparse_attention`.

    block_sparse_attention(q, k, v, layout, *, key_start=None, causal=True, sm_scale=None, kv_lens=None,
                           cu_seqlens_q=None, cu_seqlens_k=None, backend="auto", tiles=None)

Input forms:
  padded   q [B,H,Tq,D], k/v [B,H,Tk,D] -> [B,H,Tq,D]; the layout covers q_len=Tq, kv_len=Tk. The queries are
           the last Tq of the Tk positions (causal rule of kernels/layout.py).
  decode   padded plus kv_lens [B]: sequence b uses its first kv_lens[b] keys (a KV cache of Tmax=Tk, new
           tokens included) and its queries are the last Tq of those.
  jagged   cu_seqlens_q / cu_seqlens_k [n_seqs+1]: packed q [total_q,H,D], k/v [total_k,H,D] -> [total_q,H,D];
           layout batch = number of sequences (or 1, shared), padded to the longest sequence.

Element rules, every backend: the listed blocks, the causal rule (when causal), keys past the sequence length
never count, and the optional

    key_start  padded [B|1,Tq] or [B|1,H|1,Tq], jagged [total_q] or [total_q,H|1] (int):
               query i sees key j only if j >= key_start[..., i]  (left padding, journey starts, windows)

A query row that sees no key gives zeros, never NaN. sm_scale defaults to 1/sqrt(D).

Backends:
  "dense"   the torch reference (kernels._torch_refs.block_sparse_attention_ref: materialised token mask,
            fp32 softmax): the oracle; every form; any float dtype.
  "gather"  kernels/block_sparse_torch.py: visits only the listed blocks with torch's fused SDPA; padded form
            without kv_lens; exports to ONNX (traces with dynamic lengths); autograd.
  "triton"  kernels/jsa_attention.py: the Triton flash kernel on CUDA tensors, or on CPU under
            TRITON_INTERPRET=1 (set before triton's first import); float32/float16/bfloat16, head_dim <= 256,
            power-of-two layout blocks >= 16. Forward + backward kernels under autograd for the padded form
            (when gradients are needed); `tiles=(BLOCK_M, BLOCK_N)` pins the kernel tiles (else autotuned on
            CUDA, 64x64-capped off CUDA, and few query rows for decode).
  "auto"    "triton" where it can run (kernels.jsa_attention.use_triton), else "dense".
"""

from __future__ import annotations

import torch

from kernels import jsa_attention as _triton
from kernels._torch_refs import block_sparse_attention_ref
from kernels.block_sparse_torch import chunk_elements, gather_attention
from kernels.layout import BlockLayout

__all__ = ["BACKENDS", "block_sparse_attention", "chunk_elements"]

BACKENDS = ("auto", "dense", "gather", "triton")


def _check_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout,
                  key_start: torch.Tensor | None) -> None:
    # Sizes are only compared when not tracing: under the ONNX tracer they are symbolic.
    if torch.jit.is_tracing():
        return
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B,H,T,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)}/{tuple(v.shape)} disagree")
    if not q.is_floating_point():
        raise ValueError(f"q must be a float tensor, got {q.dtype}")
    b, h, tq, _ = q.shape
    if layout.q_len != tq or layout.kv_len != k.shape[2]:
        raise ValueError(f"layout is for q_len {layout.q_len}, kv_len {layout.kv_len}; "
                         f"got q_len {tq}, kv_len {k.shape[2]}")
    lb, lh = layout.kv_num_blocks.shape[:2]
    if lb not in (1, b) or lh not in (1, h):
        raise ValueError(f"layout batch/heads ({lb},{lh}) must be 1 or equal q's ({b},{h})")
    if key_start is not None and (key_start.dim() not in (2, 3) or key_start.shape[-1] != tq
                                  or key_start.shape[0] not in (1, b)):
        raise ValueError(f"key_start must be [B,Tq] or [B,H,Tq] with Tq={tq}; got {tuple(key_start.shape)}")


def _check_kv_lens(q: torch.Tensor, k: torch.Tensor, kv_lens: torch.Tensor) -> None:
    if not isinstance(kv_lens, torch.Tensor) or kv_lens.shape != (q.shape[0],):
        raise ValueError(f"kv_lens must be a 1-D tensor [B={q.shape[0]}], got "
                         f"{tuple(kv_lens.shape) if isinstance(kv_lens, torch.Tensor) else type(kv_lens).__name__}")
    if q.shape[0] and (int(kv_lens.min()) < q.shape[2] or int(kv_lens.max()) > k.shape[2]):
        raise ValueError(f"kv_lens must lie in [Tq={q.shape[2]}, Tk={k.shape[2]}]")


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *,
                           key_start: torch.Tensor | None = None, causal: bool = True,
                           sm_scale: float | None = None, kv_lens: torch.Tensor | None = None,
                           cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
                           backend: str = "auto", tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """Block-sparse attention in q's dtype (see the module docstring for the forms, rules and backends)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
        raise ValueError("give both cu_seqlens_q and cu_seqlens_k (jagged form), or neither (padded form)")
    jagged = cu_seqlens_q is not None
    if jagged and kv_lens is not None:
        raise ValueError("kv_lens is for the padded form; jagged sequences take their lengths from cu_seqlens_k")
    if backend == "auto":
        backend = "triton" if _triton.use_triton(q, k, v) else "dense"

    if backend == "triton":
        if jagged:
            return _triton.jsa_attention_jagged_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, layout, causal=causal,
                                                       sm_scale=sm_scale, key_start=key_start, tiles=tiles)
        if _needs_grad(q, k, v):
            if kv_lens is not None:
                raise ValueError("backend='triton' has backward kernels for the padded form without kv_lens only")
            return _triton.jsa_attention_trainable(q, k, v, layout, causal=causal, sm_scale=sm_scale,
                                                   key_start=key_start, tiles=tiles)
        if kv_lens is not None and tiles is None and q.is_cuda and q.dim() == 4:
            # Decode tile: as few query rows as the new tokens need (>= 16 for tl.dot), not the prefill tile.
            bm = min(max(16, 1 << max(0, q.shape[2] - 1).bit_length()), layout.q_block)
            tiles = (bm, min(layout.kv_block, 64))
        return _triton.jsa_attention_triton(q, k, v, layout, causal=causal, sm_scale=sm_scale, kv_lens=kv_lens,
                                            key_start=key_start, tiles=tiles)

    if backend == "gather":
        if jagged or kv_lens is not None:
            raise ValueError("backend='gather' takes the padded form without kv_lens; use 'dense' or 'triton'")
        _check_padded(q, k, v, layout, key_start)
        return gather_attention(q, k, v, layout, causal, sm_scale, key_start)

    # dense: the reference
    if jagged:
        cu_q, cu_k, *_ = _triton.check_jagged(q, k, v, cu_seqlens_q, cu_seqlens_k, layout, sm_scale, key_start)
        return block_sparse_attention_ref(q, k, v, layout, causal=causal, sm_scale=sm_scale, key_start=key_start,
                                          cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    _check_padded(q, k, v, layout, key_start)
    if kv_lens is not None:
        _check_kv_lens(q, k, kv_lens)
    return block_sparse_attention_ref(q, k, v, layout, causal=causal, sm_scale=sm_scale, key_start=key_start,
                                      kv_lens=kv_lens)
