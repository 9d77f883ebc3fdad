"""CLIP ops (kernels.clip_embed.clip_head, similarity_topk): the Triton backend (CPU interpreter) against the
torch references, one entry point per op.

Interpreter isolation (TRITON_INTERPRET set before triton's first import, per test only): tests/kernels/_interpret.py.
"""

from __future__ import annotations

import pytest
import torch

from kernels import _torch_refs as refs
from kernels.clip_embed import clip_head, similarity_topk
from tests.kernels._interpret import interpreter_fixture, rerun_in_fresh_process

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

interpreter = interpreter_fixture()


def test_in_fresh_process():
    rerun_in_fresh_process(__file__)


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


def test_kernel_matches_the_clip_models_own_head():
    """models.clip.model's head (projection + L2 norm, what the served CLIP towers end with) against the Triton
    kernel itself, run by the interpreter: the kernel is what the model calls on CUDA."""
    from models.clip.model import project_normalize

    x, w = _randn(5, 64, seed=3), _randn(64, 16, seed=4, scale=64 ** -0.5)
    out = clip_head(x, w, backend="triton")
    torch.testing.assert_close(out, project_normalize(x, w), atol=1e-5, rtol=1e-5)


def test_clip_head_multi_program_and_zero_row():
    x = _randn(70, 40, seed=1)
    x[5] = 0  # a zero row stays zero (eps guard), not NaN
    w = _randn(40, 32, seed=2)
    out = clip_head(x, w, backend="triton", block_n=32)
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
    scores, idx = similarity_topk(q, c, k, backend="triton", splits=splits)
    _check_topk(q, c, k, scores, idx)


def test_similarity_topk_ties_prefer_lower_index():
    c = torch.zeros(40, 16)
    c[:, 0] = 1.0  # every item scores the same
    q = _randn(2, 16, seed=3).abs()
    _, idx = similarity_topk(q, c, 5)
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entry_point_backends_agree(dtype):
    # Each op: one entry point; "torch" is the reference itself, "triton" (interpreter) and "auto" agree with it.
    x, w = _randn(21, 40, dtype=dtype, seed=4), _randn(40, 24, dtype=dtype, seed=5, scale=40 ** -0.5)
    heads = {b: clip_head(x, w, 1.5, backend=b) for b in ("torch", "triton", "auto")}
    assert torch.equal(heads["torch"], refs.clip_head_ref(x, w, 1.5))
    assert torch.equal(heads["auto"], heads["triton"])
    assert (heads["triton"].float() - heads["torch"].float()).abs().max().item() <= TOL[dtype] * 1.5
    q, c = _randn(6, 24, dtype=dtype, seed=6), _randn(90, 24, dtype=dtype, seed=7)
    tops = {b: similarity_topk(q, c, 5, backend=b) for b in ("torch", "triton", "auto")}
    rs, ri = refs.similarity_topk_ref(q, c, 5)
    assert torch.equal(tops["torch"][0], rs) and torch.equal(tops["torch"][1], ri)
    assert all(torch.equal(a, b) for a, b in zip(tops["auto"], tops["triton"]))
    _check_topk(q, c, 5, *tops["triton"])
    with pytest.raises(ValueError, match="backend"):
        clip_head(x, w, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        similarity_topk(q, c, 5, backend="dense")


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
