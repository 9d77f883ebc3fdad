"""Journey-Aware Sparse Attention (JSA, GRACE): causal self-attention over a history split into journeys,
as four sparse branches combined by learned per-head sigmoid gates computed from the query token (as NSA).

  compressed  K/V of blocks (length compress_block, stride compress_stride) mean-pooled over real tokens;
              a query sees a compressed token only if its block ends before the query's journey starts.
  selected    (intra-journey) each query block scores every earlier KV block by its queries' attention to
              the compressed keys (summed over heads, spread over the blocks each compressed token covers),
              keeps the top_n, plus the query's own block and the first real block: a BlockLayout.
  summary     (inter-journey) summaries_per_journey mean-pooled K/V tokens per journey, for the
              max_summarized_journeys most recent journeys; a query sees those of journeys before its own.
  window      (current journey) the last `window` tokens up to the query, only inside its own journey:
              a BlockLayout plus a per-query first key (key_start) where the block is partial.

The selected and window branches run through kernels.attention.block_sparse_attention over a
kernels.layout.BlockLayout, with the module's backend:
  "dense"  the torch reference (materialised token masks), the oracle;
  "gather" the torch gather path: skips unlisted blocks, exports to ONNX (training on CPU);
  "triton" the Triton kernel (CUDA, or TRITON_INTERPRET=1).
Compressed and summary branches are small dense attentions over pooled tokens (T/stride and
max_summarized_journeys * summaries_per_journey keys), identical in every backend.

Histories are left-padded (valid 0, journey id -1); padding keys are never attended and padding queries
output finite values. Everything in forward is tensor ops with shapes from the input sizes only, so the
gather backend traces to ONNX with a dynamic sequence length.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from kernels.attention import block_sparse_attention, chunk_elements
from kernels.layout import BlockLayout, dense_causal_pairs

BRANCHES = ("compressed", "selected", "summary", "window")
BACKENDS = ("dense", "gather", "triton")
_MASKED = -1e30
_NO_BLOCK = 1 << 30  # sorts after every real block index


@dataclasses.dataclass(frozen=True)
class JSAConfig:
    # Defaults tuned on CPU (docs/results/jsa_compute.md): blocks of 64 as NSA's selection, few keys per query.
    # Compressed tokens are the selection blocks themselves (block = compress_block = compress_stride): a
    # block's importance is the attention to its own pooled token, and the compressed branch (whose scores
    # are not fused, the selection needs the probabilities) costs half of what overlapping strides of 32 do.
    block: int = 64                   # query / selection / window block (tokens)
    compress_block: int = 64          # pooled length of a compressed token
    compress_stride: int = 64         # distance between compressed tokens (compress_block % stride == 0)
    top_n: int = 2                    # selected blocks per query block, besides the forced ones
    window: int = 64                  # current-journey window in tokens (token exact)
    summaries_per_journey: int = 1
    max_summarized_journeys: int = 32  # older journeys are reached through the compressed branch
    include_first_block: bool = False  # always select the first real block (an attention sink)
    # Always select the query's own block. Off by default: the window already covers the block's part in the
    # current journey, so forcing it recomputes up to a block per query for earlier journeys' tokens only.
    select_current_block: bool = False

    def __post_init__(self):
        for name in ("block", "compress_block", "compress_stride", "top_n", "window", "summaries_per_journey",
                     "max_summarized_journeys"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"JSAConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.compress_block % self.compress_stride:
            raise ValueError(f"JSAConfig.compress_block ({self.compress_block}) must be a multiple of "
                             f"compress_stride ({self.compress_stride})")

    @property
    def window_blocks(self) -> int:
        """KV blocks the window branch lists per query block (covers window tokens for every query)."""
        return -(-(self.window - 1) // self.block) + 1

    @property
    def summary_slots(self) -> int:
        return self.max_summarized_journeys * self.summaries_per_journey


@dataclasses.dataclass
class JSAPlan:
    """What one forward attended: the layouts and masks of the four branches (shared by all heads), over the
    end-aligned length T' >= T (forward adds up to lcm(block, compress_stride) - 1 padding tokens on the left)."""
    selected: BlockLayout
    selected_key_start: torch.Tensor  # [B,T]
    window: BlockLayout
    window_key_start: torch.Tensor  # [B,T]
    compressed_mask: torch.Tensor  # bool [B,T,C]
    summary_mask: torch.Tensor  # bool [B,T,S]
    real: torch.Tensor  # bool [B,T]


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _dense_chunk(q, k, v, mask, importance=True):
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):  # softmax in fp32 (and -1e30 does not fit in fp16)
        q, k, v = q.float(), k.float(), v.float()
    has_key = mask.to(q.dtype).amax(-1)  # [B,T]; a float max exports faster than any() (block_sparse_torch)
    if not importance:
        # SDPA's fused kernel (mask + softmax + PV in one pass); finite -1e30 keeps keyless rows finite.
        bias = torch.where(mask, torch.zeros((), dtype=q.dtype, device=q.device),
                           torch.full((), _MASKED, dtype=q.dtype, device=q.device))[:, None]  # [B,1,T,S]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return (out * has_key[:, None, :, None]).to(dtype), None
    # The selection needs the probabilities themselves (summed over heads), so this one stays unfused.
    scores = torch.matmul(q, k.transpose(-1, -2)).masked_fill_(~mask[:, None], _MASKED)
    probs = torch.softmax(scores, dim=-1)
    out = (torch.matmul(probs, v) * has_key[:, None, :, None]).to(dtype)
    return out, probs.detach().sum(1) * has_key[..., None]


def _journey_stats(journey_ids: torch.Tensor, real: torch.Tensor):
    """Per token: dense journey rank r (0.., pads T), journey first position, journey length; per row: the
    number of left-padding tokens and of journeys. Scatter-add + cumsum only (ONNX opset 17)."""
    b, t = journey_ids.shape
    pos = torch.arange(t, device=journey_ids.device)
    pad = t - real.long().sum(1)  # [B] left padding
    prev = torch.cat([torch.full_like(journey_ids[:, :1], -2), journey_ids[:, :-1]], dim=1)
    is_new = real & ((journey_ids != prev) | (pos == pad[:, None]))
    rank = torch.cumsum(is_new.long(), dim=1) - 1
    rank = torch.where(real, rank, torch.full_like(rank, t))  # pads go to a spare slot
    counts = torch.zeros(b, t + 1, dtype=torch.long, device=journey_ids.device)
    counts = counts.scatter_add(1, rank, torch.ones_like(rank))[:, :t]
    first = torch.cumsum(counts, dim=1) - counts
    r_safe = rank.clamp(max=t - 1)
    start = torch.where(real, pad[:, None] + first.gather(1, r_safe), pad[:, None].expand(b, t))
    length = torch.where(real, counts.gather(1, r_safe), torch.ones_like(rank))
    num_journeys = is_new.long().sum(1)
    return rank, start, length, pad, num_journeys


class JourneySparseAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, cfg: JSAConfig = JSAConfig(), backend: str = "gather",
                 max_length: int | None = None):
        """max_length: the longest input the module will be given (a model's memory length). When every input
        fits in one block (`fits_one_block`), forward computes the same function in its one-block form, in eager
        mode and in the ONNX export alike (the traced graph then holds only that form)."""
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.cfg, self.backend = cfg, backend
        self.max_length = max_length
        self.one_block = max_length is not None and self.fits_one_block(max_length)
        self.heads, self.head_dim = heads, d_model // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.gate = nn.Linear(d_model, heads * len(BRANCHES))

    def _heads(self, linear: nn.Linear, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """x [B,T,d] -> [B,H,T,hd], a view of [B,T,H,hd] memory: the gather path reads blocks of every head
        at once from that order and SDPA takes the strided views, so no per-head copy is made."""
        b, t, _ = x.shape
        y = linear(x) if scale == 1.0 else linear(x) * scale
        return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    # ---- layouts -----------------------------------------------------------------------------------------
    def _pooled_kv(self, x_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of the keys (values) of some tokens = the projection of the mean of their inputs (the
        projections are affine): pooling x once is cheaper than pooling K and V. [B,S,d] -> 2 x [B,H,S,hd]."""
        return self._heads(self.k, x_mean), self._heads(self.v, x_mean)

    def _compressed(self, x, real):
        """Mean-pooled K/V over real tokens: [B,H,C,hd] x2, token counts [B,C], first positions [C].

        Every block [c*stride, c*stride + compress_block) that overlaps the sequence, including those that
        start before position 0: with t a multiple of the stride, the set of blocks relative to the end of
        the history then does not depend on the amount of left padding."""
        cfg = self.cfg
        b, t, d = x.shape
        stride, per = cfg.compress_stride, cfg.compress_block // cfg.compress_stride
        m = t // stride  # t is a multiple of the stride (end alignment in forward)
        w = real.to(x.dtype)
        # sums per stride, then (per - 1) empty strides on both sides: blocks that stick out of the sequence
        xs = F.pad((x * w[..., None]).reshape(b, m, stride, d).sum(2), (0, 0, per - 1, per - 1))
        cnt = F.pad(w.reshape(b, m, stride).sum(2), (per - 1, per - 1))
        c = m + per - 1
        xs = sum(xs[:, u:u + c] for u in range(per))
        cnt = sum(cnt[:, u:u + c] for u in range(per))
        kc, vc = self._pooled_kv(xs / cnt.clamp(min=1.0)[..., None])
        starts = (torch.arange(c, device=x.device) - (per - 1)) * stride
        return kc, vc, cnt, starts

    def _selection_layout(self, probs, c_start, t, pad) -> BlockLayout:
        """Top-n KV blocks per query block from the compressed-branch probabilities summed over heads [B,T,C]
        (t is a multiple of the block here)."""
        cfg = self.cfg
        blk = cfg.block
        b = probs.shape[0]
        dev = probs.device
        nb = t // blk
        per_block = probs.reshape(b, nb, blk, probs.shape[-1]).sum(2)  # [B,NQB,C]
        b_start = torch.arange(nb, device=dev) * blk
        overlap = (torch.minimum(c_start[:, None] + cfg.compress_block, b_start[None, :] + blk)
                   - torch.maximum(c_start[:, None], b_start[None, :])).clamp(min=0).to(probs.dtype)
        score = torch.matmul(per_block, overlap)  # [B,NQB,NKB]
        q_blk = torch.arange(nb, device=dev)[:, None]
        kv_blk = torch.arange(nb, device=dev)[None, :]
        first = (pad // blk)[:, None, None]  # first block holding a real token
        cand = (kv_blk < q_blk) & (kv_blk >= first) & (score > 0)
        if cfg.include_first_block:
            cand = cand & (kv_blk != first)
        score = torch.where(cand, score, torch.full_like(score, -math.inf))
        score = F.pad(score, (0, cfg.top_n), value=-math.inf)  # top_n always exists, whatever T
        top_val, top_idx = torch.topk(score, cfg.top_n, dim=-1)
        picks = [torch.where(torch.isfinite(top_val), top_idx, torch.full_like(top_idx, _NO_BLOCK))]
        if cfg.include_first_block:
            use_first = first < q_blk[None]  # [B,NQB,1]
            picks.append(torch.where(use_first, first.expand(b, nb, 1), torch.full_like(top_idx[..., :1], _NO_BLOCK)))
        if cfg.select_current_block:
            picks.append(q_blk[None].expand(b, nb, 1))
        blocks = torch.sort(torch.cat(picks, dim=-1), dim=-1).values
        if not torch.jit.is_tracing():
            blocks = blocks[..., :nb]  # never more distinct blocks than exist; trims short sequences
        keep = blocks < _NO_BLOCK
        idx = torch.where(keep, blocks, torch.zeros_like(blocks)).to(torch.int32)
        return BlockLayout(keep.sum(-1).to(torch.int32)[:, None], idx[:, None], blk, blk, t, t)

    def _window_layout(self, key_start, t) -> BlockLayout:
        """Blocks from the lowest first key of the query block up to the query block (ascending)."""
        blk, width = self.cfg.block, self.cfg.window_blocks
        b = key_start.shape[0]
        nb = (t + blk - 1) // blk
        low = F.pad(key_start, (0, nb * blk - t), value=_NO_BLOCK).reshape(b, nb, blk).min(-1).values
        q_blk = torch.arange(nb, device=key_start.device)
        low_blk = torch.minimum(low // blk, q_blk[None])
        blocks = low_blk[..., None] + torch.arange(width, device=key_start.device)
        keep = blocks <= q_blk[None, :, None]
        idx = torch.where(keep, blocks, torch.zeros_like(blocks)).to(torch.int32)
        return BlockLayout(keep.sum(-1).to(torch.int32)[:, None], idx[:, None], blk, blk, t, t)

    # ---- attention -----------------------------------------------------------------------------------------
    def _block_sparse(self, q, k, v, layout, key_start, scale=1.0):
        if self.backend == "triton":
            if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                raise RuntimeError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1); got {q.device}. "
                                   "Use backend='gather' on CPU.")
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return block_sparse_attention(q, k, v, layout, key_start=key_start, causal=True, sm_scale=scale,
                                      backend=self.backend)

    @staticmethod
    def _masked_dense(q, k, v, mask, key_ends=None, importance=True):
        """Small dense attention over pooled tokens (q pre-scaled), mask [B,T,S] -> out [B,H,T,hd] (rows
        without keys: zeros) and importance [B,T,S] (probabilities summed over heads, detached).

        Eager mode runs row chunks (scores stay in cache) and, when key_ends [S] (last position each key
        covers, ascending) is given, gives each chunk only the keys that end before its last row: about half
        the compressed-branch work. Under the ONNX tracer: one chunk, all keys, the same arithmetic."""
        if torch.jit.is_tracing() or _needs_grad(q, k, v):  # chunks' backward zero-fills whole grads
            return _dense_chunk(q, k, v, mask, importance)
        b, h, t, hd = q.shape
        s = k.shape[2]
        rows = max(1, chunk_elements() // max(b * h * s, 1))
        ends = None if key_ends is None else key_ends.tolist()
        outs, imps = [], []
        for r0 in range(0, t, rows):
            r1 = min(t, r0 + rows)
            n = s if ends is None else bisect.bisect_left(ends, r1)
            if n == 0:  # no key can be visible to these rows
                outs.append(q.new_zeros(b, h, r1 - r0, hd))
                imps.append(q.new_zeros(b, r1 - r0, s))  # unused when importance is off
                continue
            out, imp = _dense_chunk(q[:, :, r0:r1], k[:, :, :n], v[:, :, :n], mask[:, r0:r1, :n], importance)
            outs.append(out)
            if importance:
                imps.append(F.pad(imp, (0, s - n)))
        return torch.cat(outs, dim=2), (torch.cat(imps, dim=1) if importance else None)

    def _check_inputs(self, x, journey_ids, valid):
        if torch.jit.is_tracing():  # sizes are symbolic under the ONNX tracer
            return
        if x.dim() != 3 or x.shape[-1] != self.heads * self.head_dim:
            raise ValueError(f"x must be [B,T,{self.heads * self.head_dim}], got {tuple(x.shape)}")
        if journey_ids.shape != x.shape[:2] or valid.shape != x.shape[:2]:
            raise ValueError(f"journey_ids {tuple(journey_ids.shape)} and valid {tuple(valid.shape)} must be "
                             f"[B,T] = {tuple(x.shape[:2])}")
        if journey_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"journey_ids must be int32/int64, got {journey_ids.dtype}")
        real = (valid > 0.5) & (journey_ids >= 0)
        if bool((real[:, 1:].long() < real[:, :-1].long()).any()):
            raise ValueError("valid/journey_ids: padding must be on the left (a pad token follows a real one)")
        both = real[:, 1:] & real[:, :-1]
        if bool((both & (journey_ids[:, 1:] < journey_ids[:, :-1])).any()):
            raise ValueError("journey_ids must be nondecreasing along T over real tokens")

    def fits_one_block(self, length: int) -> bool:
        """Whether a history of `length` tokens makes JSA two branches: it lies in the last selection block and
        the last compression stride (no compressed token ends before a query's journey starts, no earlier block
        is there to select) and inside the window (the window reaches back to the journey's start). What
        remains is the summary branch and causal attention inside the query's journey; the compressed and
        selected branches attend to nothing (zero outputs)."""
        cfg = self.cfg
        return (length <= min(cfg.block, cfg.compress_stride, cfg.window)
                and not cfg.include_first_block and not cfg.select_current_block)

    def forward(self, x: torch.Tensor, journey_ids: torch.Tensor, valid: torch.Tensor,
                return_plan: bool = False):
        """x [B,T,d], journey_ids [B,T] int (-1 on padding), valid [B,T] float -> [B,T,d]
        (and the JSAPlan when return_plan)."""
        self._check_inputs(x, journey_ids, valid)
        if self.one_block and not return_plan:
            if not torch.jit.is_tracing() and x.shape[1] > self.max_length:
                raise ValueError(f"x has {x.shape[1]} positions; this module takes at most {self.max_length}")
            return self._forward_one_block(x, journey_ids, valid)
        # Blocks and strides are aligned to the END of the history (extra left padding up to a multiple of
        # both), so a history gives the same output however much left padding its batch adds.
        t_in = x.shape[1]
        align = math.lcm(self.cfg.block, self.cfg.compress_stride)
        extra = (align - t_in % align) % align
        if extra or torch.jit.is_tracing():
            x = F.pad(x, (0, 0, extra, 0))
            journey_ids = F.pad(journey_ids.long(), (extra, 0), value=-1)
            valid = F.pad(valid, (extra, 0))
        out, plan = self._forward_aligned(x, journey_ids, valid)
        out = out[:, extra:]
        return (out, plan) if return_plan else out

    def _forward_aligned(self, x, journey_ids, valid):
        cfg = self.cfg
        b, t, d = x.shape
        q, k, v, real, (rank, start, length, pad, num_j) = self._project(x, journey_ids, valid)
        pos = torch.arange(t, device=x.device)

        # compressed: pooled blocks that end before the query's journey starts
        kc, vc, cnt, c_start = self._compressed(x, real)
        ends = c_start + (cfg.compress_block - 1)
        cmp_mask = (cnt > 0)[:, None, :] & (ends[None, None, :] < start[:, :, None]) & real[:, :, None]
        out_cmp, importance = self._masked_dense(q, kc, vc, cmp_mask, ends)

        # selected: importance from the compressed probabilities (not differentiated, as in NSA)
        sel_layout = self._selection_layout(importance, c_start, t, pad)
        sel_start = pad[:, None].expand(b, t)
        out_sel = self._block_sparse(q, k, v, sel_layout, sel_start)

        # window: the last `window` tokens, only inside the query's journey
        win_start = torch.maximum(start, pos[None, :] - (cfg.window - 1))
        win_layout = self._window_layout(win_start, t)
        out_win = self._block_sparse(q, k, v, win_layout, win_start)

        out_sum, sum_mask = self._summary(x, q, real, rank, start, length, num_j)

        # Combined in [B,T,H,hd] order: the block-sparse outputs already are, and the output projection wants it.
        gates = torch.sigmoid(self.gate(x)).view(b, t, self.heads, len(BRANCHES))
        outs = [o.transpose(1, 2) for o in (out_cmp, out_sel, out_sum, out_win)]
        out = outs[1] * gates[..., 1:2]
        for i in (0, 2, 3):
            out = torch.addcmul(out, outs[i], gates[..., i:i + 1])
        out = self.o(out.reshape(b, t, d))
        return out, JSAPlan(sel_layout, sel_start, win_layout, win_start, cmp_mask, sum_mask, real)

    def _project(self, x, journey_ids, valid):
        """What both forms start from: queries (pre-scaled, for every branch), keys, values [B,H,T,hd], the real
        tokens [B,T] and _journey_stats (rank, start, length, pad, num_journeys)."""
        q = self._heads(self.q, x, 1.0 / math.sqrt(self.head_dim))
        k, v = self._heads(self.k, x), self._heads(self.v, x)
        journey_ids = journey_ids.long()
        real = (valid > 0.5) & (journey_ids >= 0)
        return q, k, v, real, _journey_stats(journey_ids, real)

    def _summary(self, x, q, real, rank, start, length, num_j):
        """The summary branch: pooled parts of the most recent journeys before the query's own -> out
        [B,H,T,hd] and its mask [B,T,S]."""
        cfg = self.cfg
        pos = torch.arange(x.shape[1], device=x.device)
        spj, slots = cfg.summaries_per_journey, cfg.summary_slots
        oldest = num_j[:, None] - cfg.max_summarized_journeys  # journey rank of slot 0
        part = torch.div((pos[None, :] - start) * spj, length, rounding_mode="floor").clamp(0, spj - 1)
        slot = torch.where(real & (rank >= oldest), (rank - oldest) * spj + part, torch.full_like(rank, slots))
        onehot = (slot[:, :, None] == torch.arange(slots, device=x.device)).to(x.dtype)  # [B,T,S]
        s_cnt = onehot.sum(1)  # [B,S]
        ks, vs = self._pooled_kv(torch.matmul(onehot.transpose(1, 2), x) / s_cnt.clamp(min=1.0)[..., None])
        slot_rank = oldest + torch.arange(slots, device=x.device)[None, :] // spj  # [B,S]
        sum_mask = (s_cnt > 0)[:, None, :] & (slot_rank[:, None, :] < rank[:, :, None]) & real[:, :, None]
        return self._masked_dense(q, ks, vs, sum_mask, importance=False)[0], sum_mask

    def _forward_one_block(self, x, journey_ids, valid):
        """forward for inputs that fit one block (fits_one_block): the summary branch and the window branch as
        dense attention over the unpadded length (the window: every key from the query's journey start up to
        the query); the compressed and selected branches attend to nothing and add zero. About half the ONNX
        kernels of the four-branch form for the same outputs (tests/models/grace/test_jsa.py)."""
        b, t, d = x.shape
        q, k, v, real, (rank, start, length, _, num_j) = self._project(x, journey_ids, valid)
        pos = torch.arange(t, device=x.device)
        win_mask = (pos[None, None, :] >= start[:, :, None]) & (pos[None, None, :] <= pos[None, :, None]) \
            & real[:, :, None]
        out_win = self._masked_dense(q, k, v, win_mask, importance=False)[0]
        out_sum = self._summary(x, q, real, rank, start, length, num_j)[0]
        gates = torch.sigmoid(self.gate(x)).view(b, t, self.heads, len(BRANCHES))
        win, summ = BRANCHES.index("window"), BRANCHES.index("summary")
        out = out_sum.transpose(1, 2) * gates[..., summ:summ + 1]
        out = torch.addcmul(out, out_win.transpose(1, 2), gates[..., win:win + 1])
        return self.o(out.reshape(b, t, d))


def _layout_pairs(layout: BlockLayout, key_start: torch.Tensor, real: torch.Tensor) -> int:
    mask = layout.token_mask(causal=True)[:, 0]  # [B,Tq,Tk]
    mask = mask & (torch.arange(layout.kv_len) >= key_start[:, :, None]) & real[:, :, None]
    return int(mask.sum())


def count_attended_pairs(plan: JSAPlan) -> dict[str, dict[str, int]]:
    """Per branch, per head, summed over the batch (real queries only):
    attended  (query, key) pairs the branch's softmax really covers (masks applied);
    tiles     pairs inside the visited tiles (q_block x kv_block per listed block, or every pooled key):
              what a block-sparse kernel multiplies;
    gather    pairs the gather backend multiplies (fixed MAXB blocks per query block, padding included).
    Plus "dense_causal": full causal pairs over the real tokens of each row."""
    real = plan.real
    n_real = real.sum(1)
    out = {}
    for name, mask in (("compressed", plan.compressed_mask), ("summary", plan.summary_mask)):
        keys = mask.shape[-1]
        full = int(n_real.sum()) * keys
        out[name] = {"attended": int(mask.sum()), "tiles": full, "gather": full}
    for name, layout, ks in (("selected", plan.selected, plan.selected_key_start),
                             ("window", plan.window, plan.window_key_start)):
        tile = layout.q_block * layout.kv_block
        out[name] = {"attended": _layout_pairs(layout, ks, real),
                     "tiles": int(layout.kv_num_blocks.sum()) * tile,
                     "gather": int(layout.kv_indices[:, 0].numel()) * tile}
    out["dense_causal"] = {key: sum(dense_causal_pairs(int(n), int(n)) for n in n_real)
                           for key in ("attended", "tiles", "gather")}
    return out
