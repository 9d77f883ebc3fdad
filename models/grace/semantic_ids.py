"""Semantic IDs: residual k-means quantisation of item content embeddings (TIGER / GRACE style).

Level 0 clusters the embeddings; each next level clusters what the previous levels left over (the residual),
so an item's codes (c0, c1, c2) name a coarse-to-fine cell and its embedding is approximated by the sum of
the chosen centroids. Items that land in the same cell get a disambiguation code (their rank among the items
of the cell, in item-id order), which makes (codes, disambiguation) unique.

Codebook size per level (the clamping rule, applied level by level):
    k = min(codes_per_level, max(1, N // 4), number of distinct residual rows)
so there are at least 4 items per code on average on small catalogs (N // 4), k-means never asks for more
clusters than there are distinct points (which would leave empty clusters and make sklearn warn), and a
1-item catalog still gets one code. With the defaults (3 x 256) and the simulator's 1500 items: 3 x 256.

Arrays are indexed by item id; row 0 is the padding item (codes 0, never used as an item). k-means uses
sklearn (imported lazily) on one thread with a fixed seed, so results are reproducible across machines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from serving.grace.tokenizer import disambiguation_codes

ITEMS_PER_CODE = 4  # the clamp's N // 4


def clamp_codebook_size(codes_per_level: int, num_points: int, num_distinct: int | None = None) -> int:
    """The documented rule: min(codes_per_level, max(1, N // 4), distinct rows)."""
    if codes_per_level < 1:
        raise ValueError(f"codes_per_level must be >= 1, got {codes_per_level}")
    k = min(codes_per_level, max(1, num_points // ITEMS_PER_CODE))
    if num_distinct is not None:
        k = min(k, max(1, num_distinct))
    return k


@dataclasses.dataclass(frozen=True)
class SemanticIds:
    codes: np.ndarray  # int64 [N+1, levels]; row 0 = padding item (zeros)
    disamb: np.ndarray  # int64 [N+1]; (codes[i], disamb[i]) unique over items 1..N
    codebooks: tuple[np.ndarray, ...]  # per level float32 [k_l, D]
    reconstruction_mse: np.ndarray  # float64 [levels]: mean ||x - sum of the first l+1 centroids||^2
    baseline_mse: float  # mean ||x - mean(x)||^2, to read reconstruction_mse as a fraction
    seed: int = 0
    embedding_key: str = ""  # provenance: models.text_embedding.texts_key of the embedded texts, if known

    @property
    def num_items(self) -> int:
        return len(self.codes) - 1

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.codebooks)

    @property
    def collision_rate(self) -> float:
        """Fraction of items whose code tuple another item also has (they need disambiguation)."""
        if self.num_items == 0:
            return 0.0
        _, inv, counts = np.unique(self.codes[1:], axis=0, return_inverse=True, return_counts=True)
        return float((counts[inv.reshape(-1)] > 1).mean())

    def stats(self) -> dict:
        rel = self.reconstruction_mse / self.baseline_mse if self.baseline_mse > 0 else self.reconstruction_mse * 0
        used = [int(len(np.unique(self.codes[1:, l]))) for l in range(self.levels)]
        return {
            "num_items": self.num_items, "levels": self.levels, "codebook_sizes": list(self.codebook_sizes),
            "codes_used": used,
            "unique_code_tuples": int(len(np.unique(self.codes[1:], axis=0))) if self.num_items else 0,
            "collision_rate": round(self.collision_rate, 4),
            "max_disambiguation": int(self.disamb[1:].max()) if self.num_items else 0,
            "reconstruction_mse": [round(float(x), 5) for x in self.reconstruction_mse],
            "relative_reconstruction_error": [round(float(x), 4) for x in rel],
        }

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """New embeddings [M, D] -> codes [M, levels] by greedy nearest centroid per level (e.g. a cold item;
        it gets no disambiguation code, which is only defined within the fitted catalog)."""
        x = np.asarray(embeddings, np.float64)
        if x.ndim != 2 or x.shape[1] != self.codebooks[0].shape[1]:
            raise ValueError(f"embeddings must be [M, {self.codebooks[0].shape[1]}], got {x.shape}")
        codes = np.empty((len(x), self.levels), np.int64)
        residual = x.copy()
        for level, cb in enumerate(self.codebooks):
            codes[:, level] = _nearest(residual, cb.astype(np.float64))
            residual -= cb[codes[:, level]]
        return codes

    def reconstruct(self, item_ids: np.ndarray) -> np.ndarray:
        """Sum of an item's centroids: float32 [len(item_ids), D]."""
        ids = np.asarray(item_ids, np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > self.num_items):
            raise ValueError(f"item_ids must be in [1, {self.num_items}]")
        return sum(cb[self.codes[ids, l]] for l, cb in enumerate(self.codebooks)).astype(np.float32)

    def save(self, path: Path) -> None:
        """Writes exactly `path` (npz)."""
        arrays = {f"codebook_{l}": cb for l, cb in enumerate(self.codebooks)}
        with open(path, "wb") as f:
            np.savez(f, codes=self.codes, disamb=self.disamb, reconstruction_mse=self.reconstruction_mse,
                     baseline_mse=self.baseline_mse, seed=self.seed, embedding_key=np.array(self.embedding_key),
                     **arrays)

    @classmethod
    def load(cls, path: Path) -> "SemanticIds":
        with np.load(path, allow_pickle=False) as z:
            levels = z["codes"].shape[1]
            return cls(codes=z["codes"], disamb=z["disamb"],
                       codebooks=tuple(z[f"codebook_{l}"] for l in range(levels)),
                       reconstruction_mse=z["reconstruction_mse"], baseline_mse=float(z["baseline_mse"]),
                       seed=int(z["seed"]), embedding_key=str(z["embedding_key"]))


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # ||x-c||^2 = ||x||^2 - 2 x.c + ||c||^2; ties go to the lowest index (argmin), deterministic.
    d = (centroids * centroids).sum(1)[None, :] - 2.0 * x @ centroids.T
    return d.argmin(1).astype(np.int64)


def fit_residual_kmeans(embeddings: np.ndarray, levels: int = 3, codes_per_level: int = 256, seed: int = 0,
                        n_init: int = 1, max_iter: int = 100, embedding_key: str = "") -> SemanticIds:
    """Residual k-means over item embeddings.

    embeddings: float [N, D], row i is item i + 1 (item 0 is padding and is not passed).
    Returns SemanticIds indexed by item id. Deterministic for a given seed."""
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"embeddings must be [N>=1, D>=1], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or inf")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if codes_per_level < 1:
        raise ValueError(f"codes_per_level must be >= 1, got {codes_per_level}")
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    n = len(x)
    baseline = float(((x - x.mean(0)) ** 2).sum(1).mean())
    residual = x.copy()
    codes = np.zeros((n, levels), np.int64)
    codebooks, mse = [], []
    # One BLAS/OpenMP thread: the float reductions then run in one fixed order on every machine.
    with threadpool_limits(limits=1):
        for level in range(levels):
            distinct = len(np.unique(residual.round(12), axis=0))
            k = clamp_codebook_size(codes_per_level, n, distinct)
            if k == 1:
                centroids = residual.mean(0, keepdims=True).astype(np.float32).astype(np.float64)
                assign = np.zeros(n, np.int64)
            else:
                km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed + level,
                            algorithm="lloyd").fit(residual)
                # Rounded to the stored float32 codebook first, so encode() reproduces the fitted codes.
                centroids = km.cluster_centers_.astype(np.float32).astype(np.float64)
                assign = _nearest(residual, centroids)
            codes[:, level] = assign
            residual = residual - centroids[assign]
            codebooks.append(centroids.astype(np.float32))
            mse.append(float((residual ** 2).sum(1).mean()))
    disamb = disambiguation_codes(codes)
    pad = np.zeros((1, levels), np.int64)
    return SemanticIds(codes=np.concatenate([pad, codes]), disamb=np.r_[0, disamb].astype(np.int64),
                       codebooks=tuple(codebooks), reconstruction_mse=np.array(mse), baseline_mse=baseline,
                       seed=seed, embedding_key=embedding_key)


def catalog_semantic_ids(titles: list[str], *, cache_path: Path | None = None, levels: int = 3,
                         codes_per_level: int = 256, seed: int = 0, num_threads: int | None = None) -> SemanticIds:
    """Titles indexed by item id (titles[0] is the padding item, ignored) -> MiniLM embeddings (cached at
    cache_path; num_threads as in embed_texts) -> residual k-means semantic IDs."""
    from models.text_embedding import embed_texts, texts_key

    if len(titles) < 2:
        raise ValueError(f"titles must hold the padding entry and at least one item, got {len(titles)}")
    texts = list(titles[1:])
    emb = embed_texts(texts, cache_path=cache_path, num_threads=num_threads)
    return fit_residual_kmeans(emb, levels=levels, codes_per_level=codes_per_level, seed=seed,
                               embedding_key=texts_key(texts))
