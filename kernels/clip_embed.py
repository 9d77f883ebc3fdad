"""The CLIP ops, one entry point each, with a fused OpenAI Triton kernel and a torch reference:

  clip_head(features [N,F], w_proj [F,E], scale=None, *, eps=1e-12, backend="auto", block_n=None) -> [N,E]
      L2-normalised features @ w_proj (times scale). The Triton kernel does the projection, the row
      normalisation and the scale in one pass: the projected rows never go back to memory before normalisation.
  similarity_topk(queries [Q,E], catalog [N,E], k, *, backend="auto", splits=None, tiles=None)
      -> (scores [Q,k] fp32 descending, indices [Q,k] int64)
      Top-k inner products. The Triton kernel streams catalog tiles; each program keeps a running top-k per
      query in registers and skips the merge for tiles where no query beats its current k-th score. The
      catalog can be split across programs (occupancy when Q is small); the per-split lists are merged with
      one small torch.topk. Ties are broken towards the lower catalog index inside a split.

backend: "triton" (CUDA tensors, or CPU under TRITON_INTERPRET=1), "torch" (the references in
kernels/_torch_refs.py: clip_head_ref, similarity_topk_ref), or "auto" (Triton where it can run, else torch).
block_n / splits / tiles pin the Triton launch (else autotuned on CUDA); the torch backend ignores them.
Kernels are decorated lazily (see kernels/jsa_attention.py).
"""

from __future__ import annotations

import math

import torch

from kernels import _torch_refs
from kernels import jsa_attention as _jsa
from kernels.jsa_attention import _interpret_enabled, use_triton

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_EMBED_DIM = 1024
MAX_TOPK = 128
BACKENDS = ("auto", "triton", "torch")

# Bound to triton.language on first kernel use (lazy, like kernels/jsa_attention.py).
tl = None


def _clip_head_kernel(X, W, Y, N, F, E, s_xn, s_xf, s_wf, s_we, s_yn, s_ye, scale, eps,
                      FP32_DOT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_F: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_e = tl.arange(0, BLOCK_E)
    n_ok = offs_n < N
    e_ok = offs_e < E
    acc = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        f_ok = offs_f < F
        x = tl.load(X + offs_n[:, None] * s_xn + offs_f[None, :] * s_xf, mask=n_ok[:, None] & f_ok[None, :],
                    other=0.0)
        w = tl.load(W + offs_f[:, None] * s_wf + offs_e[None, :] * s_we, mask=f_ok[:, None] & e_ok[None, :],
                    other=0.0)
        if FP32_DOT:
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, w)
    norm = tl.sqrt(tl.sum(acc * acc, 1))
    inv = scale / tl.maximum(norm, eps)
    y = acc * inv[:, None]
    tl.store(Y + offs_n[:, None] * s_yn + offs_e[None, :] * s_ye, y.to(Y.dtype.element_ty),
             mask=n_ok[:, None] & e_ok[None, :])


def _topk_kernel(QRY, CAT, OUT_S, OUT_I, Q, N, E, K, n_per_split,
                 s_qq, s_qe, s_cn, s_ce, s_sq, s_ss, s_iq, s_is,
                 FP32_DOT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_E: tl.constexpr):
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_q = (pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    q_ok = offs_q < Q
    cols = tl.arange(0, BLOCK_K)
    big = 2147483647
    buf_v = tl.full([BLOCK_Q, BLOCK_K], float("-inf"), tl.float32)
    # Placeholder indices are negative and distinct so removal by index never hits a real entry.
    buf_i = tl.zeros([BLOCK_Q, BLOCK_K], tl.int32) - 1 - cols[None, :]
    kth = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    start = pid_s * n_per_split
    end = tl.minimum(start + n_per_split, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < end
        s = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            e_ok = offs_e < E
            qv = tl.load(QRY + offs_q[:, None] * s_qq + offs_e[None, :] * s_qe, mask=q_ok[:, None] & e_ok[None, :],
                         other=0.0)
            cv = tl.load(CAT + offs_n.to(tl.int64)[None, :] * s_cn + offs_e[:, None] * s_ce,
                         mask=n_ok[None, :] & e_ok[:, None], other=0.0)
            if FP32_DOT:
                s += tl.dot(qv.to(tl.float32), cv.to(tl.float32), input_precision="ieee")
            else:
                s += tl.dot(qv, cv)
        s = tl.where(n_ok[None, :], s, float("-inf"))
        # Streaming pruning: merge only when some query has a candidate strictly above its k-th best
        # (strict, so ties keep the earlier, lower index).
        improve = (tl.max(s, 1) > kth) & q_ok
        if tl.sum(improve.to(tl.int32), 0) > 0:
            tile_i = tl.zeros([BLOCK_Q, BLOCK_N], tl.int32) + offs_n[None, :]
            new_v = tl.full([BLOCK_Q, BLOCK_K], float("-inf"), tl.float32)
            new_i = tl.zeros([BLOCK_Q, BLOCK_K], tl.int32) - 1 - cols[None, :]
            for r in range(0, K):
                best = tl.maximum(tl.max(buf_v, 1), tl.max(s, 1))
                cb = tl.min(tl.where(buf_v == best[:, None], buf_i, big), 1)
                ct = tl.min(tl.where(s == best[:, None], tile_i, big), 1)
                bi = tl.minimum(cb, ct)
                new_v = tl.where(cols[None, :] == r, best[:, None], new_v)
                new_i = tl.where(cols[None, :] == r, bi[:, None], new_i)
                hit_b = buf_i == bi[:, None]
                hit_t = tile_i == bi[:, None]
                buf_v = tl.where(hit_b, float("-inf"), buf_v)
                buf_i = tl.where(hit_b, big, buf_i)
                s = tl.where(hit_t, float("-inf"), s)
                tile_i = tl.where(hit_t, big, tile_i)
            buf_v = new_v
            buf_i = new_i
            kth = tl.min(tl.where(cols[None, :] < K, buf_v, float("inf")), 1)
    out_ok = q_ok[:, None] & (cols[None, :] < K)
    tl.store(OUT_S + offs_q[:, None] * s_sq + pid_s * s_ss + cols[None, :], buf_v, mask=out_ok)
    tl.store(OUT_I + offs_q[:, None] * s_iq + pid_s * s_is + cols[None, :], buf_i.to(tl.int64), mask=out_ok)


_KERNELS: dict = {}


def _clip_configs():
    import triton

    return [triton.Config({"BLOCK_N": bn, "BLOCK_F": bf}, num_warps=w, num_stages=st)
            for bn in (16, 32, 64) for bf in (32, 64) for w in (4, 8) for st in (2, 3)]


def _prune_clip(configs, named_args, **kwargs):
    # The whole [BLOCK_N, BLOCK_E] fp32 tile lives in registers: cap it at 64x256 elements.
    kept = [c for c in configs if c.kwargs["BLOCK_N"] * kwargs["BLOCK_E"] <= 64 * 256 or c.kwargs["BLOCK_N"] == 16]
    return kept


def _topk_configs():
    import triton

    return [triton.Config({"BLOCK_Q": bq, "BLOCK_N": bn, "BLOCK_E": be}, num_warps=w, num_stages=2)
            for bq in (16, 32, 64) for bn in (64, 128) for be in (32, 64) for w in (4, 8)]


def _kernel(name: str, autotuned: bool):
    global tl
    import triton

    _jsa._require_runnable()
    tl = _jsa.load_triton()
    key = (name, _interpret_enabled(), autotuned)
    if key not in _KERNELS:
        if name == "clip_head":
            fn = triton.jit(_clip_head_kernel)
            if autotuned:
                fn = triton.autotune(configs=_clip_configs(), key=["F", "BLOCK_E", "FP32_DOT"],
                                     prune_configs_by={"early_config_prune": _prune_clip})(fn)
        else:
            fn = triton.jit(_topk_kernel)
            if autotuned:
                fn = triton.autotune(configs=_topk_configs(), key=["E", "BLOCK_K", "FP32_DOT"])(fn)
        _KERNELS[key] = fn
    return _KERNELS[key]


def _check_float(name, t):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"{name} dtype must be one of float32/float16/bfloat16, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")


def _fp32_dot(t: torch.Tensor) -> bool:
    # fp32 gets exact dots; bf16 off CUDA too, since the triton 3.9 interpreter's bf16 tl.dot is wrong.
    return t.dtype == torch.float32 or (t.dtype == torch.bfloat16 and not t.is_cuda)


def _check_clip(features, w_proj, scale, eps):
    _check_float("features", features)
    _check_float("w_proj", w_proj)
    if features.dtype != w_proj.dtype:
        raise ValueError(f"features and w_proj must share a dtype, got {features.dtype} and {w_proj.dtype}")
    if features.device != w_proj.device:
        raise ValueError(f"features and w_proj must be on one device, got {features.device} and {w_proj.device}")
    if features.shape[1] != w_proj.shape[0]:
        raise ValueError(f"features [N,F] and w_proj [F,E] disagree on F: {features.shape[1]} vs {w_proj.shape[0]}")
    if not 1 <= w_proj.shape[1] <= MAX_EMBED_DIM:
        raise ValueError(f"embedding dim E must be in [1, {MAX_EMBED_DIM}], got {w_proj.shape[1]}")
    if features.shape[1] < 1:
        raise ValueError("feature dim F must be >= 1")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a float > 0, got {eps!r}")


def _clip_head_triton(features, w_proj, scale: float | None = None, eps: float = 1e-12,
                      block_n: int | None = None) -> torch.Tensor:
    import triton

    _check_clip(features, w_proj, scale, eps)
    n, f = features.shape
    _jsa._require_runnable(features.is_cuda)
    e = w_proj.shape[1]
    out = torch.empty((n, e), dtype=features.dtype, device=features.device)
    if n == 0:
        return out
    args = (features, w_proj, out, n, f, e, features.stride(0), features.stride(1), w_proj.stride(0),
            w_proj.stride(1), out.stride(0), out.stride(1), float(1.0 if scale is None else scale), float(eps))
    const = dict(FP32_DOT=_fp32_dot(features), BLOCK_E=max(16, triton.next_power_of_2(e)))
    if features.is_cuda and block_n is None:
        _kernel("clip_head", True)[lambda m: (triton.cdiv(n, m["BLOCK_N"]),)](*args, **const)
    else:
        bn = block_n or 16
        _kernel("clip_head", False)[(triton.cdiv(n, bn),)](*args, **const, BLOCK_N=bn, BLOCK_F=32,
                                                           num_warps=4, num_stages=2)
    return out


def clip_head(features, w_proj, scale: float | None = None, *, eps: float = 1e-12, backend: str = "auto",
              block_n: int | None = None) -> torch.Tensor:
    """L2-normalised projection features [N,F] @ w_proj [F,E] (times scale) -> [N,E] in features' dtype.
    block_n: rows per Triton program (else autotuned on CUDA, 16 off CUDA)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton" or (backend == "auto" and use_triton(features, w_proj)):
        return _clip_head_triton(features, w_proj, scale, eps, block_n)
    _check_clip(features, w_proj, scale, eps)
    return _torch_refs.clip_head_ref(features, w_proj, scale, eps)


def _check_topk(queries, catalog, k):
    _check_float("queries", queries)
    _check_float("catalog", catalog)
    if queries.dtype != catalog.dtype:
        raise ValueError(f"queries and catalog must share a dtype, got {queries.dtype} and {catalog.dtype}")
    if queries.device != catalog.device:
        raise ValueError(f"queries and catalog must be on one device, got {queries.device} and {catalog.device}")
    if queries.shape[1] != catalog.shape[1]:
        raise ValueError(f"queries [Q,E] and catalog [N,E] disagree on E: {queries.shape[1]} vs {catalog.shape[1]}")
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= min(catalog.shape[0], MAX_TOPK):
        raise ValueError(f"k must be in [1, min(N={catalog.shape[0]}, {MAX_TOPK})], got {k}")


def _similarity_topk_triton(queries, catalog, k: int, splits: int | None = None,
                            tiles: tuple[int, int] | None = None):
    import triton

    _check_topk(queries, catalog, k)
    nq, e = queries.shape
    _jsa._require_runnable(queries.is_cuda)
    n = catalog.shape[0]
    dev = queries.device
    if nq == 0:
        return torch.empty((0, k), device=dev), torch.empty((0, k), dtype=torch.long, device=dev)
    if splits is None:
        if queries.is_cuda:
            # Enough programs to fill the GPU when Q is small, but each split keeps >= 2048 rows to stream.
            sms = torch.cuda.get_device_properties(dev).multi_processor_count
            splits = max(1, min(triton.cdiv(n, 2048), (4 * sms) // triton.cdiv(nq, 32)))
        else:
            splits = 1
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, N={n}], got {splits}")
    n_per_split = triton.cdiv(n, splits)
    splits = triton.cdiv(n, n_per_split)
    out_s = torch.empty((nq, splits, k), dtype=torch.float32, device=dev)
    out_i = torch.empty((nq, splits, k), dtype=torch.int64, device=dev)
    block_k = max(16, triton.next_power_of_2(k))
    args = (queries, catalog, out_s, out_i, nq, n, e, k, n_per_split, queries.stride(0), queries.stride(1),
            catalog.stride(0), catalog.stride(1), out_s.stride(0), out_s.stride(1), out_i.stride(0),
            out_i.stride(1))
    const = dict(FP32_DOT=_fp32_dot(queries), BLOCK_K=block_k)
    if queries.is_cuda and tiles is None:
        _kernel("topk", True)[lambda m: (triton.cdiv(nq, m["BLOCK_Q"]), splits)](*args, **const)
    else:
        bq, bn = tiles or (16, 32)
        _kernel("topk", False)[(triton.cdiv(nq, bq), splits)](*args, **const, BLOCK_Q=bq, BLOCK_N=bn, BLOCK_E=32,
                                                              num_warps=4, num_stages=2)
    if splits == 1:
        return out_s[:, 0], out_i[:, 0]
    top = torch.topk(out_s.view(nq, -1), k, dim=1)
    return top.values, torch.gather(out_i.view(nq, -1), 1, top.indices)


def similarity_topk(queries, catalog, k: int, *, backend: str = "auto", splits: int | None = None,
                    tiles: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products of each query against the catalog: (scores [Q,k] fp32 descending, indices int64).
    splits: catalog splits (Triton programs per query tile; else sized to the GPU, 1 off CUDA);
    tiles: (BLOCK_Q, BLOCK_N) of the Triton kernel (else autotuned on CUDA, (16, 32) off CUDA)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton" or (backend == "auto" and use_triton(queries, catalog)):
        return _similarity_topk_triton(queries, catalog, k, splits, tiles)
    _check_topk(queries, catalog, k)
    return _torch_refs.similarity_topk_ref(queries, catalog, k)
