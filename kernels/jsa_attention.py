"""Block-sparse (JSA) flash-attention in OpenAI Triton, over a kernels/layout.py BlockLayout: the "triton"
backend of `kernels.attention.block_sparse_attention` (call that; the functions here are its implementation).

One forward kernel serves the three input forms of the entry point:
  jsa_attention_triton(q, k, v, layout)                       padded batch, q [B,H,Tq,D], k/v [B,H,Tk,D]
      (kv_lens [B] shortens each sequence: decode, few new queries against a KV cache)
  jsa_attention_jagged_triton(q, k, v, cu_q, cu_k, layout)    packed [total,H,D] with cumulative offsets
  jsa_attention_trainable(q, k, v, layout)                    forward + backward kernels under autograd
                                                               (the entry point routes here when gradients
                                                               are needed)
All take key_start (per-query first visible key: left padding, journey start), the entry point's rule.
Each program owns one tile of BLOCK_M queries of one (sequence, head); it reads the count and the KV block
list of its layout query block and visits only those blocks (online softmax, fp32 accumulators), masking
partial blocks element-wise (causal rule, keys past the sequence length). Rows that see no key give zeros.

Kernel tiles: BLOCK_M divides layout.q_block and BLOCK_N divides layout.kv_block (both powers of two >= 16),
so a layout block is covered by whole tiles. On CUDA the tiles, num_warps and num_stages are autotuned.
fp32 inputs use exact ("ieee") fp32 dots; fp16/bf16 use native tensor-core dots on GPU. The CPU interpreter
of triton 3.9 computes tl.dot on bf16 operands wrongly (it multiplies the raw 16-bit patterns), so off CUDA
bf16 tiles are upcast to fp32 before the dot; everything else in the bf16 path is the same code.

`use_triton` says whether the Triton path can run (the entry point's backend="auto": CUDA tensors, or
TRITON_INTERPRET=1 for the CPU interpreter in tests; otherwise the torch reference). The kernels are
decorated lazily, at first use, because triton.jit picks compiled vs interpreted at decoration time: so
the interpreter switch is read when a kernel runs, not when this module is imported. kernels/clip_embed.py
shares these helpers (use_triton, load_triton, _require_runnable).
"""

from __future__ import annotations

import math
import os
import weakref

import torch

from kernels.layout import BlockLayout

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256
# id(kv_num_blocks) -> (weak reference, tensor version) of layouts already checked (tensors define ==, so they
# cannot key a WeakKeyDictionary).
_VALIDATED: dict = {}

# Bound to triton.language by load_triton() on first kernel use: the kernels below resolve `tl` from this
# module's globals, and importing triton here would fix its interpreter mode too early (see load_triton).
tl = None


def _interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def interpreter_usable() -> bool:
    """Whether TRITON_INTERPRET=1 kernels can run in this process.

    triton.language decorates its own helpers (tl.sum, tl.max, ...) when triton is first imported, compiled
    or interpreted according to TRITON_INTERPRET at that moment; interpreted kernels cannot call compiled
    helpers. So the interpreter works only if triton is not imported yet or was imported with it on.
    """
    import sys

    if "triton.language" not in sys.modules:
        return _interpret_enabled()
    return type(sys.modules["triton.language"].sum).__name__ == "InterpretedFunction"


def load_triton():
    """Import triton.language (once) and bind it as this module's `tl`."""
    global tl
    if tl is None:
        import triton.language

        tl = triton.language
    return tl


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the Triton path can run: CUDA tensors, or the CPU interpreter (TRITON_INTERPRET=1 set
    before triton's first import; otherwise the CPU falls back to torch)."""
    if all(t.is_cuda for t in tensors):
        return True
    return (_interpret_enabled() and all(t.device.type == "cpu" for t in tensors) and interpreter_usable())


def _jsa_fwd_kernel(
        Q, K, V, O, KV_NUM, KV_IDX, Q_START, K_START, Q_LEN, K_LEN, KS, LSE,
        sm_scale,
        s_qb, s_qh, s_qt, s_qd,
        s_kb, s_kh, s_kt, s_kd,
        s_vb, s_vh, s_vt, s_vd,
        s_ob, s_oh, s_ot, s_od,
        s_nb, s_nh, s_nq,
        s_ib, s_ih, s_iq, s_ij,
        s_sb, s_sh, s_st,
        s_lb, s_lh,
        H, HEAD_DIM,
        Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_KEY_START: tl.constexpr, FP32_DOT: tl.constexpr, STORE_LSE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_len = tl.load(Q_LEN + b)
    kv_len = tl.load(K_LEN + b)
    if pid_m * BLOCK_M < q_len:
        q_start = tl.load(Q_START + b).to(tl.int64)
        k_start = tl.load(K_START + b).to(tl.int64)
        b64 = b.to(tl.int64)
        h64 = h.to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        q_ptrs = (Q + b64 * s_qb + h64 * s_qh + (q_start + offs_m[:, None]) * s_qt + offs_d[None, :] * s_qd)
        q = tl.load(q_ptrs, mask=(offs_m[:, None] < q_len) & d_ok[None, :], other=0.0)
        # Fold log2(e) into the scale so the softmax uses exp2.
        qk_scale = sm_scale * 1.4426950408889634
        qblk = (pid_m * BLOCK_M) // Q_BLOCK
        n_blocks = tl.load(KV_NUM + b64 * s_nb + h64 * s_nh + qblk * s_nq)
        idx_base = KV_IDX + b64 * s_ib + h64 * s_ih + qblk * s_iq
        # Queries are the last q_len of the kv_len positions (decode works unchanged).
        diag = kv_len - q_len
        if HAS_KEY_START:
            # Per-query first visible key (left padding, journey start): j >= key_start[i].
            key_start = tl.load(KS + b64 * s_sb + h64 * s_sh + (q_start + offs_m) * s_st, mask=offs_m < q_len,
                                other=0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        k_base = K + b64 * s_kb + h64 * s_kh
        v_base = V + b64 * s_vb + h64 * s_vh
        for j in range(0, n_blocks):
            kb = tl.load(idx_base + j * s_ij)
            for sub in tl.static_range(KV_BLOCK // BLOCK_N):
                offs_n = kb * KV_BLOCK + sub * BLOCK_N + tl.arange(0, BLOCK_N)
                n_ok = offs_n < kv_len
                kt = tl.load(k_base + (k_start + offs_n[None, :]) * s_kt + offs_d[:, None] * s_kd,
                             mask=n_ok[None, :] & d_ok[:, None], other=0.0)
                if FP32_DOT:
                    qk = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision="ieee")
                else:
                    qk = tl.dot(q, kt)
                qk = qk * qk_scale
                valid = n_ok[None, :]
                if CAUSAL:
                    valid = valid & (offs_n[None, :] <= offs_m[:, None] + diag)
                if HAS_KEY_START:
                    valid = valid & (offs_n[None, :] >= key_start[:, None])
                qk = tl.where(valid, qk, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                # A row with nothing visible yet keeps m = -inf; shift by 0 there so exp2 gives 0, not NaN.
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.math.exp2(qk - m_safe[:, None])
                alpha = tl.math.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                vt = tl.load(v_base + (k_start + offs_n[:, None]) * s_vt + offs_d[None, :] * s_vd,
                             mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                if FP32_DOT:
                    pv = tl.dot(p, vt.to(tl.float32), input_precision="ieee")
                else:
                    pv = tl.dot(p.to(vt.dtype), vt)
                acc = acc * alpha[:, None] + pv
                m_i = m_new
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        o_ptrs = (O + b64 * s_ob + h64 * s_oh + (q_start + offs_m[:, None]) * s_ot + offs_d[None, :] * s_od)
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < q_len) & d_ok[None, :])
        if STORE_LSE:
            # log2-domain log-sum-exp of the scaled scores, for the backward; +inf for rows without keys
            # so that the recomputed probabilities are 0 there.
            lse = tl.where(l_i > 0.0, m_i + tl.math.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("inf"))
            tl.store(LSE + b64 * s_lb + h64 * s_lh + q_start + offs_m, lse, mask=offs_m < q_len)


_KERNELS: dict = {}


def _gpu_configs():
    import triton

    configs = []
    for bm in (64, 128, 32, 16):
        for bn in (64, 128, 32, 16):
            for warps in (4, 8):
                for stages in (2, 3):
                    configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps,
                                                 num_stages=stages))
    return configs


def _prune_configs(configs, named_args, **kwargs):
    qb, kvb = kwargs["Q_BLOCK"], kwargs["KV_BLOCK"]
    # Tiles must tile the layout blocks; cap at 128 so register use stays sane for head_dim up to 256.
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= qb and c.kwargs["BLOCK_N"] <= kvb
            and qb % c.kwargs["BLOCK_M"] == 0 and kvb % c.kwargs["BLOCK_N"] == 0
            and not (kwargs["BLOCK_D"] > 128 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 64 * 64)]
    # Prefer the largest tiles that fit: the autotuner then only times warps/stages around them.
    best = max((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in kept)
    near = {best, (best[0], best[1] // 2), (best[0] // 2, best[1])}
    small = [c for c in kept if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) in near]
    return small or kept


def _require_runnable(on_cuda: bool = True) -> None:
    if not on_cuda and not _interpret_enabled():
        raise ValueError("the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors "
                         "(use another backend, or backend='auto', on CPU)")
    if not on_cuda and not interpreter_usable():
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported in compiled mode; set it before "
                           "the first `import triton` in this process (or run on CUDA tensors)")
    load_triton()


def _kernel(autotuned: bool):
    """The kernel decorated under the current interpreter setting (cached per setting)."""
    import triton

    _require_runnable()
    key = ("jsa_fwd", _interpret_enabled(), autotuned)
    if key not in _KERNELS:
        fn = triton.jit(_jsa_fwd_kernel)
        if autotuned:
            fn = triton.autotune(configs=_gpu_configs(), key=["Q_BLOCK", "KV_BLOCK", "BLOCK_D", "CAUSAL"],
                                 prune_configs_by={"early_config_prune": _prune_configs})(fn)
        _KERNELS[key] = fn
    return _KERNELS[key]


def _check_pow2_block(name: str, value: int) -> None:
    if value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16 for the Triton kernel, got {value}")


def _check_common(q, k, v, layout: BlockLayout, sm_scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"{name} dtype must be one of float32/float16/bfloat16, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not isinstance(layout, BlockLayout):
        raise ValueError(f"layout must be a kernels.layout.BlockLayout, got {type(layout).__name__}")
    d = q.shape[-1]
    if k.shape[-1] != d or v.shape[-1] != d:
        raise ValueError(f"q, k, v head_dim must match, got {q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}")
    if not 1 <= d <= _MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {_MAX_HEAD_DIM}], got {d}")
    if sm_scale is not None and not (isinstance(sm_scale, (int, float)) and math.isfinite(sm_scale)):
        raise ValueError(f"sm_scale must be a finite float or None, got {sm_scale!r}")


def _layout_tensors(layout: BlockLayout, n_seqs: int, heads: int, device: torch.device):
    lb, lh = layout.kv_num_blocks.shape[:2]
    if lb not in (1, n_seqs):
        raise ValueError(f"layout batch must be 1 or {n_seqs} (number of sequences), got {lb}")
    if lh not in (1, heads):
        raise ValueError(f"layout heads must be 1 (shared) or {heads}, got {lh}")
    num = layout.kv_num_blocks.to(device=device, dtype=torch.int32)
    idx = layout.kv_indices.to(device=device, dtype=torch.int32)
    # The kernel trusts counts <= MAXB (it reads that many indices). Checking needs a device sync, so a
    # layout tensor is checked once per version, not on every call.
    src = layout.kv_num_blocks
    seen = _VALIDATED.get(id(src))
    if seen is None or seen[0]() is not src or seen[1] != src._version:
        if num.numel() and int(num.max()) > idx.shape[-1]:
            raise ValueError(f"layout kv_num_blocks max {int(num.max())} exceeds kv_indices width {idx.shape[-1]}")
        if num.numel() and int(num.min()) < 0:
            raise ValueError("layout kv_num_blocks must be >= 0")
        key = id(src)
        _VALIDATED[key] = (weakref.ref(src, lambda _ref, key=key: _VALIDATED.pop(key, None)), src._version)
    # Size-1 batch/head dims broadcast through a zero stride.
    s_n = [num.stride(0) if lb > 1 else 0, num.stride(1) if lh > 1 else 0, num.stride(2)]
    s_i = [idx.stride(0) if lb > 1 else 0, idx.stride(1) if lh > 1 else 0, idx.stride(2), idx.stride(3)]
    return num, idx, s_n, s_i


def _launch(q, k, v, out, layout, starts_q, starts_k, lens_q, lens_k, n_seqs, heads, strides, causal,
            sm_scale, max_q_len, tiles, key_start=None, ks_strides=(0, 0, 0), lse=None):
    import triton

    _require_runnable(q.is_cuda)
    num, idx, s_n, s_i = _layout_tensors(layout, n_seqs, heads, q.device)
    d = q.shape[-1]
    block_d = max(16, triton.next_power_of_2(d))
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(d)
    ks = key_start if key_start is not None else lens_q  # any int tensor: never read without HAS_KEY_START
    lse_t = lse if lse is not None else out  # never written without STORE_LSE
    lse_strides = (lse.stride(0), lse.stride(1)) if lse is not None else (0, 0)
    args = (q, k, v, out, num, idx, starts_q, starts_k, lens_q, lens_k, ks, lse_t, scale, *strides, *s_n, *s_i,
            *ks_strides, *lse_strides, heads, d)
    const = dict(Q_BLOCK=layout.q_block, KV_BLOCK=layout.kv_block, BLOCK_D=block_d, CAUSAL=bool(causal),
                 HAS_KEY_START=key_start is not None, STORE_LSE=lse is not None,
                 FP32_DOT=q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and not q.is_cuda))
    if max_q_len == 0 or n_seqs == 0 or heads == 0:
        return out
    if q.is_cuda and tiles is None:
        kern = _kernel(autotuned=True)
        grid = lambda meta: (triton.cdiv(max_q_len, meta["BLOCK_M"]), n_seqs * heads)  # noqa: E731
        kern[grid](*args, **const)
    else:
        bm, bn = tiles if tiles is not None else (min(layout.q_block, 64), min(layout.kv_block, 64))
        if layout.q_block % bm or layout.kv_block % bn or bm < 16 or bn < 16:
            raise ValueError(f"tiles {tiles} must be >= 16 and divide (q_block, kv_block) = "
                             f"({layout.q_block}, {layout.kv_block})")
        kern = _kernel(autotuned=False)
        kern[(triton.cdiv(max_q_len, bm), n_seqs * heads)](*args, **const, BLOCK_M=bm, BLOCK_N=bn,
                                                          num_warps=4, num_stages=2)
    return out


def _strides4(t):
    return [t.stride(0), t.stride(1), t.stride(2), t.stride(3)]


def _key_start_args(key_start, n_seqs: int, heads: int, tq: int, device, packed: bool):
    """-> (int32 tensor, (stride_seq, stride_head, stride_token)) with zero strides for broadcast dims."""
    if key_start is None:
        return None, (0, 0, 0)
    if not isinstance(key_start, torch.Tensor) or key_start.dtype not in (torch.int32, torch.int64):
        raise ValueError("key_start must be an int32/int64 tensor")
    ks = key_start.to(device=device, dtype=torch.int32)
    if packed:
        if ks.dim() not in (1, 2) or ks.shape[0] != tq or (ks.dim() == 2 and ks.shape[1] not in (1, heads)):
            raise ValueError(f"jagged key_start must be [total_q={tq}] or [total_q, H={heads}|1], "
                             f"got {tuple(key_start.shape)}")
        if ks.dim() == 1:
            return ks, (0, 0, ks.stride(0))
        return ks, (0, ks.stride(1) if ks.shape[1] > 1 else 0, ks.stride(0))
    if ks.dim() not in (2, 3) or ks.shape[-1] != tq or ks.shape[0] not in (1, n_seqs) or (
            ks.dim() == 3 and ks.shape[1] not in (1, heads)):
        raise ValueError(f"key_start must be [B={n_seqs}|1, Tq={tq}] or [B|1, H={heads}|1, Tq], "
                         f"got {tuple(key_start.shape)}")
    sb = ks.stride(0) if ks.shape[0] > 1 else 0
    if ks.dim() == 2:
        return ks, (sb, 0, ks.stride(1))
    return ks, (sb, ks.stride(1) if ks.shape[1] > 1 else 0, ks.stride(2))


def jsa_attention_triton(q, k, v, layout: BlockLayout, *, causal: bool = True, sm_scale: float | None = None,
                         kv_lens: torch.Tensor | None = None, key_start: torch.Tensor | None = None,
                         tiles: tuple[int, int] | None = None, return_lse: bool = False):
    """The Triton kernel on padded q [B,H,Tq,D], k/v [B,H,Tk,D]; kv_lens [B] optionally shortens sequences;
    key_start [B,Tq] or [B,H,Tq]: query i sees key j only if j >= key_start[..., i]."""
    _check_common(q, k, v, layout, sm_scale)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B,H,T,D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    bsz, heads, tq, _ = q.shape
    if k.shape[:2] != (bsz, heads) or v.shape != k.shape:
        raise ValueError(f"k, v must be [B={bsz},H={heads},Tk,D] and equal, got {tuple(k.shape)}, {tuple(v.shape)}")
    tk = k.shape[2]
    _check_pow2_block("layout.q_block", layout.q_block)
    _check_pow2_block("layout.kv_block", layout.kv_block)
    if layout.q_len != tq or layout.kv_len != tk:
        raise ValueError(f"layout covers q_len {layout.q_len}, kv_len {layout.kv_len}; tensors have Tq {tq}, Tk {tk}")
    if tq > tk:
        raise ValueError(f"Tq ({tq}) must not exceed Tk ({tk}): queries are the last Tq of the Tk positions")
    dev = q.device
    lens_q = torch.full((bsz,), tq, dtype=torch.int32, device=dev)
    if kv_lens is None:
        lens_k = torch.full((bsz,), tk, dtype=torch.int32, device=dev)
    else:
        if kv_lens.shape != (bsz,):
            raise ValueError(f"kv_lens must be [B={bsz}], got {tuple(kv_lens.shape)}")
        lens_k = kv_lens.to(device=dev, dtype=torch.int32)
        if bsz and (int(lens_k.min()) < tq or int(lens_k.max()) > tk):
            raise ValueError(f"kv_lens must lie in [Tq={tq}, Tk={tk}], got min {int(lens_k.min())} "
                             f"max {int(lens_k.max())}")
    ks, ks_strides = _key_start_args(key_start, bsz, heads, tq, dev, packed=False)
    zeros = torch.zeros((bsz,), dtype=torch.int64, device=dev)
    out = torch.empty_like(q)
    lse = torch.empty((bsz, heads, tq), dtype=torch.float32, device=dev) if return_lse else None
    strides = _strides4(q) + _strides4(k) + _strides4(v) + _strides4(out)
    _launch(q, k, v, out, layout, zeros, zeros, lens_q, lens_k, bsz, heads, strides, causal, sm_scale,
            tq, tiles, ks, ks_strides, lse)
    return (out, lse) if return_lse else out


def _check_cu(name, cu, device):
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{name} must be a 1-D tensor of n_seqs + 1 offsets")
    if cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {cu.dtype}")
    cu = cu.to(device)
    if int(cu[0]) != 0 or (cu.numel() > 1 and bool((cu[1:] < cu[:-1]).any())):
        raise ValueError(f"{name} must start at 0 and be non-decreasing")
    return cu


def check_jagged(q, k, v, cu_seqlens_q, cu_seqlens_k, layout: BlockLayout, sm_scale, key_start):
    """Validate a jagged call (every backend) -> (cu_q, cu_k, lens_q, lens_k, max_q) on q's device."""
    _check_common(q, k, v, layout, sm_scale)
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"jagged q, k, v must be [total,H,D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or k.shape[1] != q.shape[1]:
        raise ValueError(f"k, v must be [total_k,H={q.shape[1]},D] and equal, got {tuple(k.shape)}, {tuple(v.shape)}")
    cu_q = _check_cu("cu_seqlens_q", cu_seqlens_q, q.device)
    cu_k = _check_cu("cu_seqlens_k", cu_seqlens_k, q.device)
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length, got {cu_q.numel()} and "
                         f"{cu_k.numel()}")
    if int(cu_q[-1]) != q.shape[0] or int(cu_k[-1]) != k.shape[0]:
        raise ValueError(f"cu_seqlens must end at total_q={q.shape[0]} / total_k={k.shape[0]}, got "
                         f"{int(cu_q[-1])} / {int(cu_k[-1])}")
    lens_q = (cu_q[1:] - cu_q[:-1])
    lens_k = (cu_k[1:] - cu_k[:-1])
    n_seqs = lens_q.numel()
    max_q = int(lens_q.max()) if n_seqs else 0
    max_k = int(lens_k.max()) if n_seqs else 0
    if n_seqs and bool((lens_q > lens_k).any()):
        raise ValueError("each sequence needs q length <= kv length (queries are the last of its keys)")
    if layout.q_len < max_q or layout.kv_len < max_k:
        raise ValueError(f"layout covers q_len {layout.q_len}, kv_len {layout.kv_len}; longest sequence needs "
                         f"{max_q}, {max_k}")
    _key_start_args(key_start, n_seqs, q.shape[1], q.shape[0], q.device, packed=True)
    return cu_q, cu_k, lens_q, lens_k, max_q


def jsa_attention_jagged_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, layout: BlockLayout, *, causal: bool = True,
                                sm_scale: float | None = None, key_start: torch.Tensor | None = None,
                                tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """The Triton kernel on a jagged batch: q [total_q,H,D], k/v [total_k,H,D], cu_seqlens_* [n_seqs+1]
    -> [total_q,H,D].

    The layout's batch is the number of sequences (or 1, shared), padded to the longest sequence: each
    sequence reads the first ceil(len/q_block) rows of its own layout, and its queries are the last of its keys.
    key_start (optional) [total_q] or [total_q,H] int: first visible key per query, counted within its sequence.
    """
    cu_q, cu_k, lens_q, lens_k, max_q = check_jagged(q, k, v, cu_seqlens_q, cu_seqlens_k, layout, sm_scale,
                                                     key_start)
    n_seqs = lens_q.numel()
    ks, ks_strides = _key_start_args(key_start, n_seqs, q.shape[1], q.shape[0], q.device, packed=True)
    _check_pow2_block("layout.q_block", layout.q_block)
    _check_pow2_block("layout.kv_block", layout.kv_block)
    out = torch.empty_like(q)
    # Batch stride 0: the sequence start offsets place each sequence in the packed token dimension.
    strides = []
    for t in (q, k, v, out):
        strides += [0, t.stride(1), t.stride(0), t.stride(2)]
    return _launch(q, k, v, out, layout, cu_q[:-1].to(torch.int64).contiguous(),
                   cu_k[:-1].to(torch.int64).contiguous(), lens_q.to(torch.int32).contiguous(),
                   lens_k.to(torch.int32).contiguous(), n_seqs, q.shape[1], strides, causal, sm_scale, max_q, tiles,
                   ks, ks_strides)


# ---- backward (training) ---------------------------------------------------------------------------------------
# Two kernels, FlashAttention-2 style, recomputing probabilities from the forward's log2-sum-exp:
#   dQ:    one program per query tile, over the KV blocks that the layout lists for it (like the forward);
#   dK/dV: one program per KV tile, over the query blocks that visit it (the transposed layout).
# Padded [B,H,T,D] only, contiguous; delta = rowsum(dO * O) is computed in torch.

def _jsa_bwd_dq_kernel(
        Q, K, V, DO, DQ, LSE, DELTA, KV_NUM, KV_IDX, KS,
        sm_scale, s_qb, s_qh, s_kb, s_kh,
        s_nb, s_nh, s_nq, s_ib, s_ih, s_iq, s_ij, s_sb, s_sh, s_st,
        H, HEAD_DIM, q_len, kv_len,
        Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
        HAS_KEY_START: tl.constexpr, FP32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < HEAD_DIM
    md_ok = m_ok[:, None] & d_ok[None, :]
    q_off = b * s_qb + h * s_qh + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_off, mask=md_ok, other=0.0)
    do = tl.load(DO + q_off, mask=md_ok, other=0.0)
    row = pid_bh.to(tl.int64) * q_len + offs_m
    lse = tl.load(LSE + row, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + row, mask=m_ok, other=0.0)
    if HAS_KEY_START:
        key_start = tl.load(KS + b * s_sb + h * s_sh + offs_m * s_st, mask=m_ok, other=0)
    qk_scale = sm_scale * 1.4426950408889634
    diag = kv_len - q_len
    qblk = (pid_m * BLOCK_M) // Q_BLOCK
    n_blocks = tl.load(KV_NUM + b * s_nb + h * s_nh + qblk * s_nq)
    idx_base = KV_IDX + b * s_ib + h * s_ih + qblk * s_iq
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_kb + h * s_kh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j in range(0, n_blocks):
        kb = tl.load(idx_base + j * s_ij)
        for sub in tl.static_range(KV_BLOCK // BLOCK_N):
            offs_n = kb * KV_BLOCK + sub * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < kv_len
            t_off = offs_n[None, :] * HEAD_DIM + offs_d[:, None]
            kt = tl.load(k_base + t_off, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            vt = tl.load(v_base + t_off, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            kr = tl.load(k_base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                         other=0.0)
            if FP32_DOT:
                qk = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision="ieee")
                dp = tl.dot(do.to(tl.float32), vt.to(tl.float32), input_precision="ieee")
            else:
                qk = tl.dot(q, kt)
                dp = tl.dot(do, vt)
            valid = n_ok[None, :] & m_ok[:, None]
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + diag)
            if HAS_KEY_START:
                valid = valid & (offs_n[None, :] >= key_start[:, None])
            p = tl.where(valid, tl.math.exp2(qk * qk_scale - lse[:, None]), 0.0)
            ds = p * (dp - delta[:, None])
            if FP32_DOT:
                dq += tl.dot(ds, kr.to(tl.float32), input_precision="ieee")
            else:
                dq += tl.dot(ds.to(kr.dtype), kr)
    tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=md_ok)


def _jsa_bwd_dkv_kernel(
        Q, K, V, DO, DK, DV, LSE, DELTA, QT_NUM, QT_IDX, KS,
        sm_scale, s_qb, s_qh, s_kb, s_kh,
        s_nb, s_nh, s_nk, s_ib, s_ih, s_ik, s_ij, s_sb, s_sh, s_st,
        H, HEAD_DIM, q_len, kv_len,
        Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
        HAS_KEY_START: tl.constexpr, FP32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < kv_len
    d_ok = offs_d < HEAD_DIM
    nd_ok = n_ok[:, None] & d_ok[None, :]
    k_off = b * s_kb + h * s_kh + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + k_off, mask=nd_ok, other=0.0)
    v = tl.load(V + k_off, mask=nd_ok, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    diag = kv_len - q_len
    kblk = (pid_n * BLOCK_N) // KV_BLOCK
    n_blocks = tl.load(QT_NUM + b * s_nb + h * s_nh + kblk * s_nk)
    idx_base = QT_IDX + b * s_ib + h * s_ih + kblk * s_ik
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_qb + h * s_qh
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for j in range(0, n_blocks):
        qb = tl.load(idx_base + j * s_ij)
        for sub in tl.static_range(Q_BLOCK // BLOCK_M):
            offs_m = qb * Q_BLOCK + sub * BLOCK_M + tl.arange(0, BLOCK_M)
            m_ok = offs_m < q_len
            t_off = offs_m[None, :] * HEAD_DIM + offs_d[:, None]
            r_off = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
            qt = tl.load(q_base + t_off, mask=m_ok[None, :] & d_ok[:, None], other=0.0)
            dot_ = tl.load(do_base + t_off, mask=m_ok[None, :] & d_ok[:, None], other=0.0)
            qr = tl.load(q_base + r_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            dor = tl.load(do_base + r_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            row = pid_bh.to(tl.int64) * q_len + offs_m
            lse = tl.load(LSE + row, mask=m_ok, other=float("inf"))
            delta = tl.load(DELTA + row, mask=m_ok, other=0.0)
            if FP32_DOT:
                st = tl.dot(k.to(tl.float32), qt.to(tl.float32), input_precision="ieee")
                dpt = tl.dot(v.to(tl.float32), dot_.to(tl.float32), input_precision="ieee")
            else:
                st = tl.dot(k, qt)
                dpt = tl.dot(v, dot_)
            valid = n_ok[:, None] & m_ok[None, :]
            if CAUSAL:
                valid = valid & (offs_n[:, None] <= offs_m[None, :] + diag)
            if HAS_KEY_START:
                key_start = tl.load(KS + b * s_sb + h * s_sh + offs_m * s_st, mask=m_ok, other=0)
                valid = valid & (offs_n[:, None] >= key_start[None, :])
            pt = tl.where(valid, tl.math.exp2(st * qk_scale - lse[None, :]), 0.0)
            dst = pt * (dpt - delta[None, :])
            if FP32_DOT:
                dv += tl.dot(pt, dor.to(tl.float32), input_precision="ieee")
                dk += tl.dot(dst, qr.to(tl.float32), input_precision="ieee")
            else:
                dv += tl.dot(pt.to(dor.dtype), dor)
                dk += tl.dot(dst.to(qr.dtype), qr)
    tl.store(DK + k_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=nd_ok)
    tl.store(DV + k_off, dv.to(DV.dtype.element_ty), mask=nd_ok)


def _bwd_kernels():
    import triton

    _require_runnable()
    key = ("jsa_bwd", _interpret_enabled())
    if key not in _KERNELS:
        _KERNELS[key] = (triton.jit(_jsa_bwd_dq_kernel), triton.jit(_jsa_bwd_dkv_kernel))
    return _KERNELS[key]


def transposed_layout(layout: BlockLayout) -> BlockLayout:
    """Per KV block, the query blocks that visit it (roles of q and kv swapped): the dK/dV loop order."""
    mask = layout.block_mask().transpose(-1, -2)
    return BlockLayout.from_block_mask(mask, layout.kv_block, layout.q_block, layout.kv_len, layout.q_len)


class _JSAAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout, causal, sm_scale, key_start, tiles):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = jsa_attention_triton(q, k, v, layout, causal=causal, sm_scale=sm_scale, key_start=key_start,
                                        tiles=tiles, return_lse=True)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.causal, ctx.sm_scale, ctx.key_start, ctx.tiles = layout, causal, sm_scale, key_start, tiles
        return out

    @staticmethod
    def backward(ctx, dout):
        import triton

        q, k, v, out, lse = ctx.saved_tensors
        layout = ctx.layout
        bsz, heads, tq, d = q.shape
        tk = k.shape[2]
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1).contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        scale = float(ctx.sm_scale) if ctx.sm_scale is not None else 1.0 / math.sqrt(d)
        ks, ks_strides = _key_start_args(ctx.key_start, bsz, heads, tq, q.device, packed=False)
        ks = ks if ks is not None else lse
        bm, bn = ctx.tiles or (min(layout.q_block, 64), min(layout.kv_block, 64))
        const = dict(Q_BLOCK=layout.q_block, KV_BLOCK=layout.kv_block, BLOCK_D=max(16, triton.next_power_of_2(d)),
                     CAUSAL=bool(ctx.causal), HAS_KEY_START=ctx.key_start is not None,
                     FP32_DOT=q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and not q.is_cuda),
                     BLOCK_M=bm, BLOCK_N=bn, num_warps=4, num_stages=2)
        dq_kernel, dkv_kernel = _bwd_kernels()
        num, idx, s_n, s_i = _layout_tensors(layout, bsz, heads, q.device)
        dq_kernel[(triton.cdiv(tq, bm), bsz * heads)](
            q, k, v, dout, dq, lse, delta, num, idx, ks, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            *s_n, *s_i, *ks_strides, heads, d, tq, tk, **const)
        lt = transposed_layout(layout)
        tnum, tidx, t_n, t_i = _layout_tensors(lt, bsz, heads, q.device)
        dkv_kernel[(triton.cdiv(tk, bn), bsz * heads)](
            q, k, v, dout, dk, dv, lse, delta, tnum, tidx, ks, scale, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), *t_n, *t_i, *ks_strides, heads, d, tq, tk, **const)
        return dq, dk, dv, None, None, None, None, None


def jsa_attention_trainable(q, k, v, layout: BlockLayout, *, causal: bool = True, sm_scale: float | None = None,
                            key_start: torch.Tensor | None = None,
                            tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """The Triton forward + backward kernels under autograd (padded [B,H,T,D]); the entry point routes here
    when gradients are needed on the Triton path."""
    _check_common(q, k, v, layout, sm_scale)
    return _JSAAttentionFn.apply(q, k, v, layout, causal, sm_scale, key_start, tiles)
