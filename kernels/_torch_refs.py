"""The PyTorch references of the kernels ops, one per op: the test oracles and the CPU fallbacks.

  block_sparse_attention_ref   kernels.attention.block_sparse_attention (backend "dense")
  clip_head_ref                kernels.clip_embed.clip_head (backend "torch")
  similarity_topk_ref          kernels.clip_embed.similarity_topk (backend "torch")

They favour clarity over speed (dense masks, fp32 math) and follow kernels/layout.py exactly: the element
mask is the listed blocks, the causal rule with the queries at the end of each sequence, keys past the
sequence length never count, and a row that sees no key gives zeros.
"""

from __future__ import annotations

import math

import torch

from kernels.layout import BlockLayout

_MASKED = -1e30  # finite: a fully masked row stays NaN-free (uniform weights) and is zeroed afterwards


def _token_mask(layout: BlockLayout, causal: bool, q_lens: torch.Tensor | None = None,
                kv_lens: torch.Tensor | None = None, key_start: torch.Tensor | None = None) -> torch.Tensor:
    """bool [B|1, H|1, layout.q_len, layout.kv_len] with per-sequence lengths (defaults: the layout's).

    With per-sequence lengths, sequence b uses the first q_lens[b] query rows and the first kv_lens[b] keys;
    its queries are the last q_lens[b] of its kv_lens[b] positions (decode and jagged batches).
    key_start [B|1, Tq] or [B|1, H|1, Tq]: query i sees key j only if j >= key_start[..., i].
    """
    block = layout.block_mask()
    b = max([block.shape[0]] + [t.numel() for t in (q_lens, kv_lens) if t is not None])
    block = block.expand(b, -1, -1, -1)  # a batch-1 (shared) layout serves every sequence
    dev = block.device
    if q_lens is None:
        q_lens = torch.full((b,), layout.q_len, dtype=torch.long, device=dev)
    if kv_lens is None:
        kv_lens = torch.full((b,), layout.kv_len, dtype=torch.long, device=dev)
    q_lens = q_lens.to(dev).long().view(b, 1, 1, 1)
    kv_lens = kv_lens.to(dev).long().view(b, 1, 1, 1)
    mask = block.repeat_interleave(layout.q_block, 2)[:, :, : layout.q_len]
    mask = mask.repeat_interleave(layout.kv_block, 3)[:, :, :, : layout.kv_len]
    i = torch.arange(layout.q_len, device=dev).view(1, 1, -1, 1)
    j = torch.arange(layout.kv_len, device=dev).view(1, 1, 1, -1)
    mask = mask & (i < q_lens) & (j < kv_lens)
    if causal:
        mask = mask & (j <= i + (kv_lens - q_lens))
    if key_start is not None:
        ks = key_start.to(dev).long()
        ks = ks[:, None] if ks.dim() == 2 else ks
        mask = mask & (j >= ks[..., None])
    return mask


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      sm_scale: float | None = None) -> torch.Tensor:
    """Dense attention [B,H,Tq,D] under a bool mask broadcastable to [B,H,Tq,Tk]: fp32 scores, masked softmax,
    rows without a visible key -> zeros; output in q's dtype."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, _MASKED)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v.float())
    out = torch.where(mask.any(-1, keepdim=True), out, torch.zeros_like(out))
    return out.to(q.dtype)


def block_sparse_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *,
                               causal: bool = True, sm_scale: float | None = None,
                               key_start: torch.Tensor | None = None, kv_lens: torch.Tensor | None = None,
                               cu_seqlens_q: torch.Tensor | None = None,
                               cu_seqlens_k: torch.Tensor | None = None) -> torch.Tensor:
    """Block-sparse attention by a materialised token mask (see kernels.attention.block_sparse_attention).

    Padded: q [B,H,Tq,D], k/v [B,H,Tk,D] -> [B,H,Tq,D]; key_start [B|1,Tq] or [B|1,H|1,Tq];
      kv_lens [B] (optional) shortens each sequence (decode from a cache: queries are its last Tq positions).
    Jagged (cu_seqlens_q and cu_seqlens_k [n_seqs+1] given): packed q [total_q,H,D], k/v [total_k,H,D]
      -> [total_q,H,D]; layout batch = number of sequences (or 1), padded to the longest; key_start
      [total_q] or [total_q,H|1], counted within each query's own sequence.
    """
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
        raise ValueError("give both cu_seqlens_q and cu_seqlens_k (jagged), or neither (padded)")
    if cu_seqlens_q is None:
        return _masked_attention(q, k, v, _token_mask(layout, causal, None, kv_lens, key_start), sm_scale)
    cu_q = cu_seqlens_q.tolist()
    cu_k = cu_seqlens_k.tolist()
    q_lens = torch.tensor([cu_q[i + 1] - cu_q[i] for i in range(len(cu_q) - 1)])
    kv_lens = torch.tensor([cu_k[i + 1] - cu_k[i] for i in range(len(cu_k) - 1)])
    mask = _token_mask(layout, causal, q_lens, kv_lens)
    out = torch.zeros_like(q)
    for b in range(len(cu_q) - 1):
        tq, tk = int(q_lens[b]), int(kv_lens[b])
        if tq == 0:
            continue
        qb = q[cu_q[b]:cu_q[b + 1]].transpose(0, 1)[None]
        kb = k[cu_k[b]:cu_k[b + 1]].transpose(0, 1)[None]
        vb = v[cu_k[b]:cu_k[b + 1]].transpose(0, 1)[None]
        mb = mask[min(b, mask.shape[0] - 1):][:1, :, :tq, :tk]
        if key_start is not None:
            ks = key_start[cu_q[b]:cu_q[b + 1]].long()
            ks = ks[None, None, :] if ks.dim() == 1 else ks.T[None]  # -> [1, H|1, tq]
            mb = mb & (torch.arange(tk, device=q.device) >= ks[..., None])
        out[cu_q[b]:cu_q[b + 1]] = _masked_attention(qb, kb, vb, mb, sm_scale)[0].transpose(0, 1)
    return out


def clip_head_ref(features: torch.Tensor, w_proj: torch.Tensor, scale: float | None = None,
                  eps: float = 1e-12) -> torch.Tensor:
    """features [N,F] @ w_proj [F,E] -> L2-normalised rows (fp32 math), times scale when given."""
    y = features.float() @ w_proj.float()
    y = y / y.norm(dim=-1, keepdim=True).clamp_min(eps)
    if scale is not None:
        y = y * scale
    return y.to(features.dtype)


def similarity_topk_ref(queries: torch.Tensor, catalog: torch.Tensor, k: int,
                        chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products per query, streaming over catalog chunks so memory stays O(Q * (chunk + k))."""
    qf = queries.float()
    best_s = torch.full((queries.shape[0], 0), float("-inf"), device=queries.device)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, catalog.shape[0], chunk):
        s = qf @ catalog[start:start + chunk].float().T
        idx = torch.arange(start, start + s.shape[1], device=queries.device).expand(s.shape[0], -1)
        s = torch.cat([best_s, s], 1)
        idx = torch.cat([best_i, idx], 1)
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        best_s, best_i = top.values, torch.gather(idx, 1, top.indices)
    return best_s, best_i
