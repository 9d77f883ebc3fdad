"""Microbenchmarks: JSA block-sparse attention and the CLIP kernels against their torch peers.

    python -m kernels.bench [--device cpu|cuda] [--lengths 512 1024 ...] [--out docs/results]

Attention (one JSA-like layout, `jsa_bench_layout`, shared by every method):
  Our methods run through kernels.attention.block_sparse_attention (backend="triton" / "gather").
  cuda: triton (our kernel, autotuned), flex (torch FlexAttention, BlockMask built from our BlockLayout),
        sdpa_causal (dense causal SDPA = FlashAttention), gather (the entry point's torch gather backend);
        fp16 default;
        timed with triton.testing.do_bench; lengths 512..8192.
  cpu:  gather, flex (torch.compile on CPU), sdpa_causal, dense_masked (SDPA with the layout's token mask);
        the Triton kernel is not timed on CPU (the interpreter is a correctness tool, not a backend);
        time.perf_counter over --repeats runs after warm-up; default lengths 1024 2048 4096 (a few minutes on
        2 cores, FlexAttention compiles once per length, ~30-50 s each).
CLIP: clip_head (fused projection + L2 norm) vs the unfused torch ops; similarity top-k vs matmul + topk.
TFLOP/s counts useful FLOPs: 4 * head_dim * attended (query, key) pairs of each method's mask, so dense causal
is "causal halved" and a block-sparse method is credited only with the pairs its layout allows.
Writes the result file kernels_<device>.json (command, commit, date, machine, rows) under --out and,
rendered from it, kernels_<device>.md / .csv / .png (`python -m evaluation.report --check` compares the .md/.csv).
`python -m kernels.bench --compile-only [ARCH]` instead compiles every Triton kernel for sm_ARCH (default 90)
with the ptxas shipped in the triton wheel: a no-GPU check of the compiled path.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels.layout import BlockLayout, dense_causal_pairs
from kernels.machine import cpu_description

ROOT = Path(__file__).resolve().parent.parent


def jsa_bench_layout(seq_len: int, block: int, window_tokens: int = 256, selected_tokens: int = 256,
                     seed: int = 0) -> BlockLayout:
    """A JSA-like causal layout [1,1,NQB,MAXB]: per query block the first block, a sliding window of the last
    window_tokens (own block included), and selected_tokens worth of earlier blocks picked at random (the
    "selected" blocks of JSA/NSA). About 28-30% of causal blocks at 4096 tokens for blocks of 64 or 128."""
    if seq_len < 1 or block < 16 or block & (block - 1):
        raise ValueError(f"seq_len must be >= 1 and block a power of two >= 16, got {seq_len}, {block}")
    nb = -(-seq_len // block)
    window = max(1, window_tokens // block)
    n_sel = max(1, selected_tokens // block)
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 1, nb, nb, dtype=torch.bool)
    for i in range(nb):
        mask[0, 0, i, 0] = True
        mask[0, 0, i, max(0, i - window + 1): i + 1] = True
        earlier = torch.arange(1, max(1, i - window + 1))
        if earlier.numel():
            pick = earlier[torch.randperm(earlier.numel(), generator=g)[:n_sel]]
            mask[0, 0, i, pick] = True
    return BlockLayout.from_block_mask(mask, block, block, seq_len, seq_len)


def causal_block_density(layout: BlockLayout) -> float:
    """Visited tiles / causal tiles (lower triangle incl. diagonal)."""
    nb = layout.num_q_blocks
    return layout.computed_block_pairs() / (layout.kv_num_blocks.shape[0] * layout.kv_num_blocks.shape[1]
                                            * nb * (nb + 1) / 2)


def flex_block_mask(layout: BlockLayout, causal: bool, device):
    """torch FlexAttention BlockMask equal to our layout: tiles entirely visible become "full" blocks (no
    mask_mod call), the others are partial with the causal / length rule as mask_mod."""
    from torch.nn.attention.flex_attention import BlockMask

    q_len, kv_len = layout.q_len, layout.kv_len
    off = kv_len - q_len
    blocks = layout.block_mask().to(device)
    nqb, nkb = blocks.shape[-2:]
    qi = torch.arange(nqb, device=device)[:, None]
    kj = torch.arange(nkb, device=device)[None, :]
    # Full: every key of the tile exists and, if causal, is <= the first query of the tile.
    full = blocks & ((kj + 1) * layout.kv_block <= kv_len) & ((qi + 1) * layout.q_block <= q_len)
    if causal:
        full = full & ((kj + 1) * layout.kv_block - 1 <= qi * layout.q_block + off)
    partial = blocks & ~full

    def compact(m):
        counts = m.sum(-1).to(torch.int32)
        order = torch.sort((~m).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
        return counts.contiguous(), order.contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        ok = kv_idx < kv_len
        if causal:
            ok = ok & (kv_idx <= q_idx + off)
        return ok

    pn, pi = compact(partial)
    fn, fi = compact(full)
    return BlockMask.from_kv_blocks(pn, pi, fn, fi, BLOCK_SIZE=(layout.q_block, layout.kv_block),
                                    mask_mod=mask_mod, seq_lengths=(q_len, kv_len))


def _time_cpu(fn, repeats: int, warmup: int = 1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return statistics.median(times), q[0], q[-1]


def _time_cuda(fn):
    import triton.testing

    med, p10, p90 = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.1, 0.9])
    return med, p10, p90


def machine_info(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    info["cpu"] = cpu_description()
    # Other jobs on a shared machine slow every method; the load average says how busy it was.
    info["load_avg_1_5_15"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _attention_methods(device: str, layout: BlockLayout, q, k, v):
    from kernels.attention import block_sparse_attention

    methods = {}
    if device == "cuda":
        methods["triton"] = lambda: block_sparse_attention(q, k, v, layout, causal=True, backend="triton")
    methods["gather"] = lambda: block_sparse_attention(q, k, v, layout, causal=True, backend="gather")
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = flex_block_mask(layout, True, q.device)
    flex = torch.compile(flex_attention, dynamic=False)
    methods["flex"] = lambda: flex(q, k, v, block_mask=block_mask)
    methods["sdpa_causal"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if device == "cpu":
        mask = layout.token_mask(True).to(q.device)
        methods["dense_masked"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return methods


def bench_attention(device: str, lengths, batch: int, heads: int, head_dim: int, block: int, dtype,
                    repeats: int, log):
    rows = []
    for t in lengths:
        layout = jsa_bench_layout(t, block)
        dens = causal_block_density(layout)
        sparse_pairs = layout.attended_pairs(True)
        # Layout tensors live on the device, so no method pays a host-to-device copy per call.
        layout = BlockLayout(layout.kv_num_blocks.to(device), layout.kv_indices.to(device), layout.q_block,
                             layout.kv_block, layout.q_len, layout.kv_len)
        g = torch.Generator(device="cpu").manual_seed(t)
        q, k, v = (torch.randn(batch, heads, t, head_dim, generator=g).to(device=device, dtype=dtype)
                   for _ in range(3))
        sparse_flops = 4 * head_dim * sparse_pairs * batch * heads
        causal_flops = 4 * head_dim * dense_causal_pairs(t, t) * batch * heads
        methods = _attention_methods(device, layout, q, k, v)
        ref = methods["gather"]().float()
        for name, fn in methods.items():
            t0 = time.perf_counter()
            try:
                out = fn()  # also the compile / autotune step, excluded from the timings
            except Exception as err:  # a peer that cannot run here is reported, not fatal
                log(f"  {name:12s} T={t}: FAILED {type(err).__name__}: {str(err)[:200]}")
                rows.append(dict(op="attention", method=name, device=device, dtype=str(dtype).split(".")[-1],
                                 size=t, batch=batch, heads=heads, head_dim=head_dim, block=block,
                                 density=round(dens, 3), ms_median="", ms_p10="", ms_p90="", tflops="",
                                 max_err="", note=f"failed: {type(err).__name__}"))
                continue
            first = time.perf_counter() - t0
            err = "" if name == "sdpa_causal" else f"{(out.float() - ref).abs().max().item():.2e}"
            med, p10, p90 = _time_cuda(fn) if device == "cuda" else _time_cpu(fn, repeats)
            flops = causal_flops if name == "sdpa_causal" else sparse_flops
            tflops = flops / (med * 1e-3) / 1e12
            log(f"  {name:12s} T={t:5d} density={dens:.2f}  {med:9.3f} ms (p10 {p10:.3f}, p90 {p90:.3f})  "
                f"{tflops:7.3f} TFLOP/s  err={err or '-'}  first call {first:.1f}s")
            rows.append(dict(op="attention", method=name, device=device, dtype=str(dtype).split(".")[-1], size=t,
                             batch=batch, heads=heads, head_dim=head_dim, block=block, density=round(dens, 3),
                             ms_median=round(med, 4), ms_p10=round(p10, 4), ms_p90=round(p90, 4),
                             tflops=round(tflops, 4), max_err=err, note=""))
        del q, k, v
    return rows


def bench_clip(device: str, n_rows: int, feat: int, embed: int, n_queries: int, catalog: int, topk: int, dtype,
               repeats: int, log):
    from kernels.clip_embed import clip_head, similarity_topk

    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n_rows, feat, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(feat, embed, generator=g) / math.sqrt(feat)).to(device=device, dtype=dtype)
    qs = F.normalize(torch.randn(n_queries, embed, generator=g), dim=-1).to(device=device, dtype=dtype)
    cat = F.normalize(torch.randn(catalog, embed, generator=g), dim=-1).to(device=device, dtype=dtype)

    def unfused():
        y = x @ w
        return y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def mm_topk():
        return torch.topk(qs @ cat.T, topk, dim=1)

    cases = [("clip_head", "torch_unfused", unfused, 2 * n_rows * feat * embed, n_rows)]
    if device == "cuda":
        cases.append(("clip_head", "triton_fused", lambda: clip_head(x, w, backend="triton"),
                      2 * n_rows * feat * embed, n_rows))
    else:
        cases.append(("clip_head", "torch_normalize", lambda: F.normalize(torch.mm(x, w), dim=-1),
                      2 * n_rows * feat * embed, n_rows))
    cases.append(("similarity_topk", "torch_matmul_topk", mm_topk, 2 * n_queries * catalog * embed, catalog))
    if device == "cuda":
        cases.append(("similarity_topk", "triton_streaming",
                      lambda: similarity_topk(qs, cat, topk, backend="triton"), 2 * n_queries * catalog * embed,
                      catalog))
    else:
        cases.append(("similarity_topk", "torch_chunked", lambda: similarity_topk(qs, cat, topk, backend="torch"),
                      2 * n_queries * catalog * embed, catalog))
    rows = []
    ref_head = unfused().float()
    ref_top = mm_topk().values.float()
    for op, name, fn, flops, size in cases:
        out = fn()
        err = (out.float() - ref_head).abs().max().item() if op == "clip_head" else \
            (out[0].float() - ref_top).abs().max().item()
        med, p10, p90 = _time_cuda(fn) if device == "cuda" else _time_cpu(fn, repeats)
        tflops = flops / (med * 1e-3) / 1e12
        log(f"  {op:16s} {name:18s} {med:9.3f} ms (p10 {p10:.3f}, p90 {p90:.3f})  {tflops:7.3f} TFLOP/s  "
            f"err={err:.2e}")
        rows.append(dict(op=op, method=name, device=device, dtype=str(dtype).split(".")[-1], size=size,
                         batch=n_queries if op == "similarity_topk" else n_rows, heads="", head_dim=embed,
                         block="", density="", ms_median=round(med, 4), ms_p10=round(p10, 4), ms_p90=round(p90, 4),
                         tflops=round(tflops, 4), max_err=f"{err:.2e}",
                         note=f"F={feat}" if op == "clip_head" else f"k={topk}"))
    return rows


def compile_check(arch: int = 90, log=print) -> list[str]:
    """Compile the Triton kernels (JSA forward and backward, CLIP head, top-k) ahead of time for sm_<arch>
    (ptxas ships in the triton wheel), no GPU needed:
    catches errors in the compiled path, which CPU tests (interpreter) never run. Needs a process where
    triton was imported without TRITON_INTERPRET=1. Returns one line per compiled variant."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import clip_embed, jsa_attention

    if jsa_attention._interpret_enabled() or not isinstance(triton.jit(compile_check_probe), triton.JITFunction):
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset (compiled mode)")
    clip_embed.tl = jsa_attention.load_triton()
    target = GPUTarget("cuda", arch, 32)
    done = []

    def build(fn, types, consts, num_warps, num_stages):
        sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in inspect.signature(fn).parameters}
        t0 = time.perf_counter()
        kern = triton.compile(ASTSource(triton.jit(fn), sig, consts), target=target,
                              options={"num_warps": num_warps, "num_stages": num_stages})
        line = (f"{fn.__name__} {types.get('Q', types.get('X', types.get('QRY')))} {consts}: ok in "
                f"{time.perf_counter() - t0:.1f}s, shared {kern.metadata.shared} B")
        log(line)
        done.append(line)

    for dt, causal, ks, bm, bn in (("fp16", True, False, 128, 64), ("bf16", True, True, 64, 64)):
        ptr = "*" + dt
        build(jsa_attention._jsa_fwd_kernel,
              dict(Q=ptr, K=ptr, V=ptr, O=ptr, KV_NUM="*i32", KV_IDX="*i32", Q_START="*i64", K_START="*i64",
                   Q_LEN="*i32", K_LEN="*i32", KS="*i32", LSE="*fp32", sm_scale="fp32"),
              dict(Q_BLOCK=128, KV_BLOCK=128, BLOCK_D=64, CAUSAL=causal, HAS_KEY_START=ks, FP32_DOT=False,
                   STORE_LSE=ks, BLOCK_M=bm, BLOCK_N=bn), 8 if bm == 128 else 4, 3)
    bwd_types = dict(Q="*fp16", K="*fp16", V="*fp16", DO="*fp16", DQ="*fp16", DK="*fp16", DV="*fp16",
                     LSE="*fp32", DELTA="*fp32", KV_NUM="*i32", KV_IDX="*i32", QT_NUM="*i32", QT_IDX="*i32",
                     KS="*i32", sm_scale="fp32")
    bwd_consts = dict(Q_BLOCK=128, KV_BLOCK=128, BLOCK_D=64, CAUSAL=True, HAS_KEY_START=True, FP32_DOT=False,
                      BLOCK_M=64, BLOCK_N=64)
    build(jsa_attention._jsa_bwd_dq_kernel, bwd_types, bwd_consts, 4, 2)
    build(jsa_attention._jsa_bwd_dkv_kernel, bwd_types, bwd_consts, 4, 2)
    build(clip_embed._clip_head_kernel, dict(X="*fp16", W="*fp16", Y="*fp16", scale="fp32", eps="fp32"),
          dict(FP32_DOT=False, BLOCK_E=512, BLOCK_N=32, BLOCK_F=64), 4, 2)
    build(clip_embed._topk_kernel, dict(QRY="*fp16", CAT="*fp16", OUT_S="*fp32", OUT_I="*i64"),
          dict(FP32_DOT=False, BLOCK_K=16, BLOCK_Q=32, BLOCK_N=128, BLOCK_E=64), 4, 2)
    return done


def compile_check_probe(x):  # a trivial function: triton.jit on it tells compiled vs interpreted mode
    return x


FIELDS = ["op", "method", "device", "dtype", "size", "batch", "heads", "head_dim", "block", "density", "ms_median",
          "ms_p10", "ms_p90", "tflops", "max_err", "note"]


def _fmt(ms) -> str:
    return "" if ms == "" else (f"{ms:.3f}" if ms < 10 else f"{ms:.1f}")


SHAPE_KEYS = ("device", "batch", "heads", "head_dim", "block", "dtype", "repeats", "lengths")


def result_of(rows, info: dict, args) -> dict:
    """The result file's content: where it came from (command, commit, date, machine), the run's settings, the
    machine details and the measured rows; `render` / `render_csv` / `plot` make everything else from it."""
    from evaluation.provenance import provenance  # noqa: PLC0415 - only the CLI records provenance

    return {**provenance("kernels.bench", args.argv), "settings": {k: getattr(args, k) for k in SHAPE_KEYS},
            "info": info, "rows": rows}


def render_csv(result: dict) -> str:
    """The rows as CSV (kernels_<device>.csv), exactly as `python -m evaluation.report` checks it."""
    import io  # noqa: PLC0415

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["rows"])
    return buf.getvalue()


def plot(result: dict, path: Path) -> Path:
    """Median time and useful TFLOP/s of every attention method against the sequence length."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    st, info = result["settings"], result["info"]
    att = [r for r in result["rows"] if r["op"] == "attention" and r["ms_median"] != ""]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in dict.fromkeys(r["method"] for r in att):
        pts = [r for r in att if r["method"] == method]
        axes[0].plot([r["size"] for r in pts], [r["ms_median"] for r in pts], "o-", label=method)
        axes[1].plot([r["size"] for r in pts], [r["tflops"] for r in pts], "o-", label=method)
    for ax, label in zip(axes, ("median ms (log)", "useful TFLOP/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"JSA attention on {st['device']} ({info.get('gpu', info['cpu'])[:60]}), "
                 f"B={st['batch']} H={st['heads']} D={st['head_dim']} block={st['block']} {st['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def render(result: dict) -> str:
    """kernels_<device>.md from the result file (`python -m evaluation.report` renders it into BENCHMARKS.md)."""
    from evaluation.provenance import line  # noqa: PLC0415

    st, device = result["settings"], result["settings"]["device"]
    lines = [f"# Kernel microbenchmarks ({device})", "", f"{line(result)}.", ""]
    lines += [f"- {k}: {v}" for k, v in result["info"].items()]
    lines += [f"- attention shape: B={st['batch']} H={st['heads']} D={st['head_dim']}, layout block {st['block']}, "
              f"{st['dtype']}; CLIP head N=4096 F=768 E=512 (cuda: N=65536); top-k Q=64 N=100000 E=512 k=10 "
              f"(cuda: Q=256 N=1000000)"]
    lines += ["", "Attention: one JSA-like layout (kernels.bench.jsa_bench_layout: first block + 256-token causal "
              "window + 256 tokens of random earlier blocks per query block); density = visited tiles / causal "
              "tiles. TFLOP/s counts useful FLOPs (4·D·attended pairs; dense causal = causal halved). err = max "
              "abs difference to the torch gather path (sdpa_causal computes a different mask: no err). "
              "Times: median (p10-p90) ms" + (" via triton.testing.do_bench." if device == "cuda" else
                                               f" over {st['repeats']} runs after warm-up (time.perf_counter)."),
              f"The same rows: `kernels_{device}.json` (the result file) and `kernels_{device}.csv`; the attention "
              "rows are plotted below (written by the same run).",
              "", "| op | method | size | density | median ms | p10-p90 ms | TFLOP/s | err | note |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        spread = f"{_fmt(r['ms_p10'])}-{_fmt(r['ms_p90'])}" if r["ms_p10"] != "" else ""
        lines.append(f"| {r['op']} | {r['method']} | {r['size']} | {r['density']} | {_fmt(r['ms_median'])} | "
                     f"{spread} | {r['tflops']} | {r['max_err']} | {r['note']} |")
    lines += ["", f"![attention time and useful TFLOP/s against the sequence length](kernels_{device}.png)"]
    return "\n".join(lines) + "\n"


def write_outputs(rows, info: dict, args, out_dir: Path) -> list[Path]:
    """kernels_<device>.json (the result file) and what is rendered from it: .md, .csv, .png."""
    import json  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"kernels_{args.device}"
    result = result_of(rows, info, args)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{stem}.csv").write_text(render_csv(result))
    Path(f"{stem}.md").write_text(render(result))
    plot(result, Path(f"{stem}.png"))
    return [Path(f"{stem}.{ext}") for ext in ("json", "csv", "md", "png")]


def main(argv=None):
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="sequence lengths (default: cpu 1024 2048 4096; cuda 512 1024 2048 4096 8192)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--batch", type=int, default=None, help="default: cpu 1, cuda 4")
    p.add_argument("--heads", type=int, default=None, help="default: cpu 4, cuda 16")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block", type=int, default=None, help="layout block (default: cpu 64, cuda 128)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="default: cpu float32, cuda float16")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per case on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all visible)")
    p.add_argument("--skip-clip", action="store_true")
    p.add_argument("--compile-only", type=int, nargs="?", const=90, default=None, metavar="ARCH",
                   help="only compile the Triton kernels for sm_ARCH (default 90) without a GPU, then exit")
    args = p.parse_args(argv)
    if args.compile_only is not None:
        compile_check(args.compile_only)
        return
    args.argv = argv
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    args.lengths = args.lengths or ([512, 1024, 2048, 4096, 8192] if cuda else [1024, 2048, 4096])
    args.batch = args.batch or (4 if cuda else 1)
    args.heads = args.heads or (16 if cuda else 4)
    args.block = args.block or (128 if cuda else 64)
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    info = machine_info(args.device)
    print(info, flush=True)

    def log(msg):
        print(msg, flush=True)

    rows = bench_attention(args.device, args.lengths, args.batch, args.heads, args.head_dim, args.block, dtype,
                           args.repeats, log)
    if not args.skip_clip:
        if cuda:
            rows += bench_clip("cuda", 65536, 768, 512, 256, 1_000_000, 10, dtype, args.repeats, log)
        else:
            rows += bench_clip("cpu", 4096, 768, 512, 64, 100_000, 10, dtype, args.repeats, log)
    for path in write_outputs(rows, info, args, args.out):
        print("wrote", path)


if __name__ == "__main__":
    main()
