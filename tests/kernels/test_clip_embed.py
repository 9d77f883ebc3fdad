"""Fused CLIP head and streaming similarity top-k: Triton kernels (CPU interpreter) vs PyTorch references.

Interpreter handling as in tests/test_kernels_jsa.py (imported with TRITON_INTERPRET=1, set per test only).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import _torch_refs as refs
from kernels.clip_embed import clip_head, clip_head_triton, similarity_topk, similarity_topk_triton
from kernels.jsa_attention import interpreter_usable

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _import_triton_interpreted() -> bool:
    """Import triton with TRITON_INTERPRET=1 (its helpers are fixed at first import), then restore the variable
    so the interpreter does not leak into other test files. False if triton was already imported compiled."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401

        return interpreter_usable()
    finally:
        _restore(old)


def _restore(old):
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


INTERPRETED = _import_triton_interpreted()


@pytest.fixture(autouse=True)
def interpreter(request):
    """TRITON_INTERPRET=1 only while this file's tests run."""
    if request.node.name == "test_in_fresh_process":
        yield
        return
    if not INTERPRETED:
        pytest.skip("triton was imported in compiled mode before this file; test_in_fresh_process runs it")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    _restore(old)


def test_in_fresh_process():
    # Another test file imported triton first (without the interpreter): rerun this file in a fresh process.
    if INTERPRETED:
        pytest.skip("the interpreter works in this process; the tests ran here")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k",
                           "not test_in_fresh_process"], env=env, cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,f,e,scale", [(1, 16, 16, None), (37, 50, 24, 2.5)])
def test_clip_head(dtype, n, f, e, scale):
    x = _randn(n, f, dtype=dtype, seed=n)
    w = _randn(f, e, dtype=dtype, seed=f, scale=f ** -0.5)
    out = clip_head(x, w, scale)
    ref = refs.clip_head_ref(x, w, scale)
    assert out.dtype == dtype and out.shape == (n, e)
    assert (out.float() - ref.float()).abs().max().item() <= TOL[dtype] * (scale or 1.0)
    norms = out.float().norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, scale or 1.0), atol=TOL[dtype] * 10)


def test_clip_head_multi_program_and_zero_row():
    x = _randn(70, 40, seed=1)
    x[5] = 0  # a zero row stays zero (eps guard), not NaN
    w = _randn(40, 32, seed=2)
    out = clip_head_triton(x, w, block_n=32)
    assert torch.isfinite(out).all() and (out[5] == 0).all()
    assert (out - refs.clip_head_ref(x, w)).abs().max().item() <= 1e-5


def _check_topk(q, c, k, scores, idx):
    ref_s, _ = refs.similarity_topk_ref(q, c, k)
    assert scores.shape == (q.shape[0], k) and idx.dtype == torch.int64
    assert (scores - ref_s).abs().max().item() <= 1e-4
    # The returned indices really carry those scores and are distinct (robust to ties in the order).
    exact = (q.float() @ c.float().T).gather(1, idx)
    assert (exact - scores).abs().max().item() <= 1e-4
    assert all(len(set(row)) == k for row in idx.tolist())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nq,n,k,splits", [(1, 300, 1, 1), (5, 300, 7, 3), (18, 20, 20, 1)])
def test_similarity_topk(dtype, nq, n, k, splits):
    q = _randn(nq, 24, dtype=dtype, seed=nq)
    c = _randn(n, 24, dtype=dtype, seed=n + 1)
    scores, idx = similarity_topk_triton(q, c, k, splits=splits)
    _check_topk(q, c, k, scores, idx)


def test_similarity_topk_ties_prefer_lower_index():
    c = torch.zeros(40, 16)
    c[:, 0] = 1.0  # every item scores the same
    q = _randn(2, 16, seed=3).abs()
    _, idx = similarity_topk(q, c, 5)
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_bad_input_raises():
    q, c = _randn(2, 16), _randn(10, 16)
    with pytest.raises(ValueError, match="k must be"):
        similarity_topk(q, c, 11)
    with pytest.raises(ValueError, match="disagree on E"):
        similarity_topk(q, _randn(10, 8), 3)
    with pytest.raises(ValueError, match="disagree on F"):
        clip_head(q, _randn(8, 4))
    with pytest.raises(ValueError, match="dtype"):
        clip_head(q.double(), _randn(16, 4).double())
    with pytest.raises(ValueError, match="embedding dim"):
        clip_head(q, _randn(16, 2048))


def test_cpu_without_interpreter_falls_back_to_torch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, c, x, w = _randn(3, 16), _randn(50, 16, seed=1), _randn(4, 8, seed=2), _randn(8, 16, seed=3)
    assert torch.equal(clip_head(x, w), refs.clip_head_ref(x, w))
    s, i = similarity_topk(q, c, 4)
    rs, ri = refs.similarity_topk_ref(q, c, 4)
    assert torch.equal(s, rs) and torch.equal(i, ri)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: the compiled GPU kernels "
                    "(autotuned) are only exercised on a CUDA machine")
def test_cuda_kernels():
    x = _randn(300, 256, dtype=torch.float16).cuda()
    w = _randn(256, 128, dtype=torch.float16, scale=1 / 16).cuda()
    ref = refs.clip_head_ref(x, w)
    assert (clip_head(x, w).float() - ref.float()).abs().max().item() <= 2e-3
    q, c = _randn(8, 128, seed=1).cuda(), _randn(20000, 128, seed=2).cuda()
    s, i = similarity_topk(q, c, 10)
    _check_topk(q, c, 10, s, i)
