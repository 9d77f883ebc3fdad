"""FAISS index build/search/save/load over normalised embeddings, recall against exact search."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.clip.ann_index import IndexConfig, build_index, config_for, load_index, save_index, search
from evaluation.ann_sweep import clustered_vectors, recall_at_k, run_sweep

DATA = clustered_vectors(3000, 16, clusters=30, seed=0)
BASE, QUERIES = DATA[:2800], DATA[2800:]


def _exact(k):
    return search(build_index(BASE, IndexConfig(kind="flat")), QUERIES, k)[1]


@pytest.mark.parametrize("cfg", [IndexConfig(kind="hnsw", hnsw_m=16, ef_search=128),
                                 IndexConfig(kind="ivf", nlist=32, nprobe=8)])
def test_approximate_indexes_reach_recall(cfg):
    ids = search(build_index(BASE, cfg), QUERIES, 20)[1]
    assert recall_at_k(ids, _exact(20)) >= 0.95


def test_flat_matches_numpy_and_ids_are_mapped():
    ids_map = np.arange(len(BASE)) * 10 + 7
    scores, ids = search(build_index(BASE, IndexConfig(kind="flat"), ids=ids_map), QUERIES[:5], 3)
    sims = QUERIES[:5] @ BASE.T
    want = np.argsort(-sims, axis=1)[:, :3]
    np.testing.assert_array_equal(ids, ids_map[want])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, want, 1), rtol=1e-5)


def test_low_nprobe_loses_recall():
    """The knobs really act: one probed list out of 64 misses neighbours that exact search finds."""
    low = search(build_index(BASE, IndexConfig(kind="ivf", nlist=64, nprobe=1)), QUERIES, 50)[1]
    assert recall_at_k(low, _exact(50)) < 0.95


@pytest.mark.parametrize("cfg", [IndexConfig(kind="hnsw", hnsw_m=8, ef_search=40),
                                 IndexConfig(kind="ivf", nlist=16, nprobe=3)])
def test_save_load_roundtrip(tmp_path, cfg):
    index = build_index(BASE, cfg)
    save_index(index, tmp_path / "x.faiss", cfg)
    again = load_index(tmp_path / "x.faiss")
    np.testing.assert_array_equal(search(again, QUERIES, 10)[1], search(index, QUERIES, 10)[1])


def test_errors():
    index = build_index(BASE, IndexConfig(kind="flat"))
    with pytest.raises(ValueError, match="dimension"):
        search(index, np.zeros((1, 8), np.float32), 5)
    with pytest.raises(ValueError, match="k must be"):
        search(index, QUERIES, 0)
    with pytest.raises(ValueError, match="nlist"):
        build_index(BASE[:10], IndexConfig(kind="ivf", nlist=32))
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="lsh")
    with pytest.raises(FileNotFoundError):
        load_index("/nonexistent/x.faiss")


def test_sweep_picks_a_config_meeting_the_target():
    res = run_sweep(BASE[:1200], QUERIES[:50], k=20, log=lambda *_: None)
    chosen = res["chosen"]
    assert chosen is not None and chosen["recall"] >= 0.95
    ok = [r for r in res["rows"] if r["recall"] >= 0.95]
    assert chosen["p50_ms"] == min(r["p50_ms"] for r in ok)
    assert config_for(200).kind == "flat" and config_for(1500).kind == "ivf" and config_for(10**6).nlist == 1024


def test_serving_import_needs_no_torch():
    code = "import sys, serving.clip.ann_index; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_every_step_imports_without_torch_or_sklearn():
    """What each python stub imports at start (and again at every reload): no torch, and no scikit-learn, whose
    import alone took 1.2 s of a stub's start."""
    code = ("import sys, serving.steps; heavy = [m for m in ('torch', 'sklearn') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
