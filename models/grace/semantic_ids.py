"""Semantic IDs: residual k-means quantisation of item content embeddings (TIGER / GRACE style).

Level 0 clusters the embeddings; each next level clusters what the previous levels left over (the residual),
so an item's codes (c0, c1, c2) name a coarse-to-fine cell and its embedding is approximated by the sum of
the chosen centroids. Items that land in the same cell get a disambiguation code (their rank among the items
of the cell, in item-id order), which makes (codes, disambiguation) unique.

Codebook size per level (`codebook_size`, the same at every level but a grown last one, see below),
fitted to the catalog of N items:
    k = min(codes_per_level, smallest k with k ** levels >= headroom * N, max(1, N // 4), distinct rows)
so there are about `headroom` (16) code tuples per item, enough room for one tuple per item, while the
coarse levels stay coarse (k = 29 per level for 1500 items and 3 levels, where a fixed 256 would give level 0
about 6 items per code); at least 4 items per code on average on small catalogs (N // 4); k-means never asks
for more clusters than there are distinct points (which would leave empty clusters and make sklearn warn);
a 1-item catalog still gets one code. headroom=None drops the catalog fit (k = min(codes_per_level, N // 4,
distinct)).

Last level, collision-free assignment (unique_last_level=True, the default): plain nearest-centroid codes
collide a lot on clustered content (27% of the MovieLens-100k items with 3 x 256 codes), because residual
k-means clusters all residuals together and items of one cell often share the next code too. So the last
level's centroids are fitted by k-means as before, but the items of each cell of the previous levels get
distinct last codes: a minimum-total-squared-distance assignment of the cell's items to the codebook
(scipy linear_sum_assignment). The last codebook is grown, when needed, to the largest such cell (within
the clamp above: codes_per_level, N // 4, distinct rows), so every cell fits; a cell with more items than
codes would spread them evenly (each code at most ceil(m / k) times). Collisions thus remain only where
they cannot be avoided (tiny catalogs, identical embeddings, cells over codes_per_level items).
`collision_rate(codes)` measures what is left; `SemanticIds.stats()` reports it with `max_items_per_code`.

Arrays are indexed by item id; row 0 is the padding item (codes 0, never used as an item). k-means uses
sklearn (imported lazily) on one thread with a fixed seed, and the assignment is exact and deterministic,
so results are reproducible across machines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from serving.grace.tokenizer import disambiguation_codes

ITEMS_PER_CODE = 4  # the clamp's N // 4
DEFAULT_HEADROOM = 16.0  # code tuples per item: codebook_size's k ** levels >= headroom * N
# Cells of more items than this keep their nearest-centroid last codes: the exact assignment costs O(m^3).
MAX_ASSIGNED_CELL = 2048


def collision_rate(codes: np.ndarray) -> float:
    """Share of the rows of codes [N, levels] (one item per row, no padding row) whose code tuple another row
    also has: the items that need a disambiguation code. 0.0 for no rows."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [N, levels], got shape {codes.shape}")
    if len(codes) == 0:
        return 0.0
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inv.reshape(-1)] > 1).mean())


def max_items_per_code(codes: np.ndarray) -> int:
    """Largest number of rows of codes [N, levels] sharing one code tuple (1 = collision-free; 0 for no rows)."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return 0
    return int(np.unique(codes, axis=0, return_counts=True)[1].max())


def clamp_codebook_size(codes_per_level: int, num_points: int, num_distinct: int | None = None) -> int:
    """The clamp: min(codes_per_level, max(1, N // 4), distinct rows)."""
    if codes_per_level < 1:
        raise ValueError(f"codes_per_level must be >= 1, got {codes_per_level}")
    k = min(codes_per_level, max(1, num_points // ITEMS_PER_CODE))
    if num_distinct is not None:
        k = min(k, max(1, num_distinct))
    return k


def fitted_codebook_size(num_items: int, levels: int, headroom: float = DEFAULT_HEADROOM) -> int:
    """Smallest k with k ** levels >= headroom * num_items (exact integer arithmetic, no float roots)."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if not headroom > 0:
        raise ValueError(f"headroom must be > 0, got {headroom}")
    target = headroom * max(1, num_items)
    k = max(1, int(round(target ** (1.0 / levels))) - 1)
    while k ** levels < target:
        k += 1
    while k > 1 and (k - 1) ** levels >= target:
        k -= 1
    return k


def codebook_size(num_items: int, levels: int, codes_per_level: int = 256, headroom: float | None = DEFAULT_HEADROOM,
                  num_distinct: int | None = None) -> int:
    """The documented rule: min(codes_per_level, fitted_codebook_size(N, levels, headroom), max(1, N // 4),
    distinct rows); headroom=None leaves out the catalog fit."""
    k = clamp_codebook_size(codes_per_level, num_items, num_distinct)
    if headroom is not None:
        k = min(k, fitted_codebook_size(num_items, levels, headroom))
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
    # Items whose last code is not their nearest last-level centroid (moved by the collision-free assignment).
    reassigned: int = 0

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
        return collision_rate(self.codes[1:])

    def stats(self) -> dict:
        rel = self.reconstruction_mse / self.baseline_mse if self.baseline_mse > 0 else self.reconstruction_mse * 0
        used = [int(len(np.unique(self.codes[1:, l]))) for l in range(self.levels)]
        return {
            "num_items": self.num_items, "levels": self.levels, "codebook_sizes": list(self.codebook_sizes),
            "codes_used": used,
            "unique_code_tuples": int(len(np.unique(self.codes[1:], axis=0))) if self.num_items else 0,
            "collision_rate": round(self.collision_rate, 4),
            "max_items_per_code": max_items_per_code(self.codes[1:]),
            "max_disambiguation": int(self.disamb[1:].max()) if self.num_items else 0,
            "reassigned_last_codes": self.reassigned,
            "reconstruction_mse": [round(float(x), 5) for x in self.reconstruction_mse],
            "relative_reconstruction_error": [round(float(x), 4) for x in rel],
        }

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """New embeddings [M, D] -> codes [M, levels] by greedy nearest centroid per level (e.g. a cold item;
        it gets no disambiguation code, which is only defined within the fitted catalog). For the fitted items
        it reproduces every level but the last, and the last too except for the `reassigned` items that the
        collision-free assignment moved to another free code of their cell."""
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
                     reassigned=self.reassigned, **arrays)

    @classmethod
    def load(cls, path: Path) -> "SemanticIds":
        with np.load(path, allow_pickle=False) as z:
            levels = z["codes"].shape[1]
            return cls(codes=z["codes"], disamb=z["disamb"],
                       codebooks=tuple(z[f"codebook_{l}"] for l in range(levels)),
                       reconstruction_mse=z["reconstruction_mse"], baseline_mse=float(z["baseline_mse"]),
                       seed=int(z["seed"]), embedding_key=str(z["embedding_key"]),
                       reassigned=int(z["reassigned"]) if "reassigned" in z.files else 0)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # ||x-c||^2 = ||x||^2 - 2 x.c + ||c||^2; ties go to the lowest index (argmin), deterministic.
    d = (centroids * centroids).sum(1)[None, :] - 2.0 * x @ centroids.T
    return d.argmin(1).astype(np.int64)


def _squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] + (centroids * centroids).sum(1)[None, :] - 2.0 * x @ centroids.T
    return np.maximum(d, 0.0)


def unique_cell_codes(cells: np.ndarray, residual: np.ndarray, centroids: np.ndarray,
                      max_cell: int = MAX_ASSIGNED_CELL) -> np.ndarray:
    """Last-level codes [N] that differ within each cell where they can.

    cells: int [N] the cell (code tuple of the previous levels) of each item; residual [N, D] what the
    previous levels left; centroids [k, D]. Each cell of m items gets the assignment of its items to codes
    with the least total squared distance, each code used at most ceil(m / k) times (once when m <= k).
    A 1-item cell, and a cell over max_cell items, keep the nearest centroid. Deterministic."""
    from scipy.optimize import linear_sum_assignment

    k = len(centroids)
    codes = _nearest(residual, centroids)
    if k == 1:
        return codes
    order = np.argsort(cells, kind="stable")
    bounds = np.flatnonzero(np.r_[True, cells[order][1:] != cells[order][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        members = order[a:b]  # item order inside the cell: ascending row
        m = len(members)
        if m == 1 or m > max_cell or len(np.unique(codes[members])) == m:
            continue  # nothing to separate, too large to solve exactly, or already distinct
        cost = _squared_distances(residual[members], centroids)
        copies = -(-m // k)  # ceil: each code may serve this many items of the cell
        rows, cols = linear_sum_assignment(np.tile(cost, (1, copies)) if copies > 1 else cost)
        codes[members[rows]] = cols % k
    return codes


def fit_residual_kmeans(embeddings: np.ndarray, levels: int = 3, codes_per_level: int = 256, seed: int = 0,
                        n_init: int = 1, max_iter: int = 100, embedding_key: str = "",
                        headroom: float | None = DEFAULT_HEADROOM, unique_last_level: bool = True) -> SemanticIds:
    """Residual k-means over item embeddings.

    embeddings: float [N, D], row i is item i + 1 (item 0 is padding and is not passed).
    codes_per_level: the largest codebook; the size used is `codebook_size` (fitted to N with headroom).
    unique_last_level: the collision-free last-level assignment (`unique_cell_codes`); False keeps the
    nearest centroid at every level.
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
    if headroom is not None and not headroom > 0:
        raise ValueError(f"headroom must be > 0 (or None), got {headroom}")
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    n = len(x)
    baseline = float(((x - x.mean(0)) ** 2).sum(1).mean())
    residual = x.copy()
    codes = np.zeros((n, levels), np.int64)
    codebooks, mse = [], []
    reassigned = 0
    # One BLAS/OpenMP thread: the float reductions then run in one fixed order on every machine.
    with threadpool_limits(limits=1):
        for level in range(levels):
            distinct = len(np.unique(residual.round(12), axis=0))
            k = codebook_size(n, levels, codes_per_level, headroom, distinct)
            unique_here = unique_last_level and level == levels - 1
            if unique_here:
                cells = (np.unique(codes[:, :level], axis=0, return_inverse=True)[1].reshape(-1) if level
                         else np.zeros(n, np.int64))  # one level: the whole catalog is one cell
                if level:
                    # Room for the largest cell, so that each cell's items can all get distinct codes.
                    largest = int(np.bincount(cells).max())
                    k = max(k, min(largest, clamp_codebook_size(codes_per_level, n, distinct)))
            if k == 1:
                centroids = residual.mean(0, keepdims=True).astype(np.float32).astype(np.float64)
                assign = np.zeros(n, np.int64)
            else:
                km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed + level,
                            algorithm="lloyd").fit(residual)
                # Rounded to the stored float32 codebook first, so encode() reproduces the fitted codes.
                centroids = km.cluster_centers_.astype(np.float32).astype(np.float64)
                assign = _nearest(residual, centroids)
                if unique_here:
                    unique = unique_cell_codes(cells, residual, centroids)
                    reassigned = int((unique != assign).sum())
                    assign = unique
            codes[:, level] = assign
            residual = residual - centroids[assign]
            codebooks.append(centroids.astype(np.float32))
            mse.append(float((residual ** 2).sum(1).mean()))
    disamb = disambiguation_codes(codes)
    pad = np.zeros((1, levels), np.int64)
    return SemanticIds(codes=np.concatenate([pad, codes]), disamb=np.r_[0, disamb].astype(np.int64),
                       codebooks=tuple(codebooks), reconstruction_mse=np.array(mse), baseline_mse=baseline,
                       seed=seed, embedding_key=embedding_key, reassigned=reassigned)


def catalog_semantic_ids(titles: list[str], *, cache_path: Path | None = None, levels: int = 3,
                         codes_per_level: int = 256, seed: int = 0, num_threads: int | None = None,
                         headroom: float | None = DEFAULT_HEADROOM, unique_last_level: bool = True) -> SemanticIds:
    """Titles indexed by item id (titles[0] is the padding item, ignored) -> MiniLM embeddings (cached at
    cache_path; num_threads as in embed_texts) -> residual k-means semantic IDs."""
    from models.text_embedding import embed_texts, texts_key

    if len(titles) < 2:
        raise ValueError(f"titles must hold the padding entry and at least one item, got {len(titles)}")
    texts = list(titles[1:])
    emb = embed_texts(texts, cache_path=cache_path, num_threads=num_threads)
    return fit_residual_kmeans(emb, levels=levels, codes_per_level=codes_per_level, seed=seed,
                               embedding_key=texts_key(texts), headroom=headroom,
                               unique_last_level=unique_last_level)


def main(argv: list[str] | None = None) -> None:
    """`python -m models.grace.semantic_ids DATASET_DIR [...]`: the semantic IDs and token paths a build fits
    for a dataset directory (docs/dataset.md), printed as JSON (the build's metrics["grace"] entries)."""
    import argparse
    import dataclasses
    import json

    from data.build_data import load_build_data
    from models.grace.recommender import VARIANTS, GraceTrainConfig, build_history_encoder

    defaults = GraceTrainConfig()
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("dataset", help="dataset directory, e.g. /tmp/simds or the output of python -m data.movielens")
    ap.add_argument("--variant", default="grace_jsa", choices=sorted(VARIANTS))
    ap.add_argument("--levels", type=int, default=defaults.semantic_levels)
    ap.add_argument("--codes", type=int, default=defaults.semantic_codes)
    ap.add_argument("--headroom", type=float, default=defaults.semantic_headroom, help="0: no catalog fit")
    ap.add_argument("--no-unique-last", action="store_true", help="nearest-centroid codes at the last level too")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(defaults, semantic_levels=args.levels, semantic_codes=args.codes,
                              semantic_headroom=args.headroom, semantic_unique_last=not args.no_unique_last)
    dataset = load_build_data(args.dataset, check_images=False).sequences()
    _, info = build_history_encoder(dataset, VARIANTS[args.variant], cfg, args.seed)
    print(json.dumps({"dataset": dataset.name, "num_items": dataset.num_items, **info}, indent=1))


if __name__ == "__main__":
    main()
