"""FAISS ANN index over L2-normalised CLIP embeddings (inner product = cosine).

Serving imports this module without torch: build_index / save_index / load_index / search need faiss + numpy.
Parameters come from a recall/latency sweep against exact IndexFlatIP (`python -m evaluation.ann_sweep sweep`,
docs/results/ann_sweep.md): the fastest configuration with recall@100 >= 0.95 at one search thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import faiss
import numpy as np

KINDS = ("flat", "hnsw", "ivf")
RECALL_TARGET = 0.95
K_SWEEP = 100


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    kind: str = "hnsw"
    hnsw_m: int = 16
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int = 256
    nprobe: int = 16

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for f in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")

    def name(self) -> str:
        if self.kind == "hnsw":
            return f"HNSW(M={self.hnsw_m}, efSearch={self.ef_search})"
        if self.kind == "ivf":
            return f"IVF-Flat(nlist={self.nlist}, nprobe={self.nprobe})"
        return "Flat (exact)"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        return cls(**d)


# The sweep's picks (docs/results/ann_sweep.md; rerun it when the catalogue changes scale): on the 1.5k item
# embeddings IVF-Flat(32, 4); on 100k clustered vectors IVF-Flat(1024, 2). Below 39 points per list faiss
# cannot train the quantiser well, and exact search costs microseconds there anyway (the 200 campaigns).
CATALOGUE_CONFIG = IndexConfig(kind="ivf", nlist=32, nprobe=4)
LARGE_CONFIG = IndexConfig(kind="ivf", nlist=1024, nprobe=2)


def config_for(num_vectors: int) -> IndexConfig:
    """Index configuration for a collection of this size, from the sweep's choices."""
    if num_vectors < 39 * CATALOGUE_CONFIG.nlist:
        return IndexConfig(kind="flat")
    return CATALOGUE_CONFIG if num_vectors < 39 * LARGE_CONFIG.nlist else LARGE_CONFIG


def _check_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, the index has {dim}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(x, dtype=np.float32)


def _base(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)


def apply_search_params(index: faiss.Index, config: IndexConfig) -> faiss.Index:
    base = _base(index)
    if config.kind == "hnsw":
        base.hnsw.efSearch = config.ef_search
    elif config.kind == "ivf":
        base.nprobe = min(config.nprobe, base.nlist)
    return index


def build_index(embeddings: np.ndarray, config: IndexConfig, ids: np.ndarray | None = None) -> faiss.Index:
    """An inner-product index over `embeddings` (rows should be L2-normalised); `ids` (int64, default row
    numbers) are what `search` returns. IVF trains its coarse quantiser on the embeddings themselves."""
    x = _check_matrix(embeddings, "embeddings")
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
    if config.kind == "flat":
        base = faiss.IndexFlatIP(d)
    elif config.kind == "hnsw":
        base = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = config.ef_construction
    else:
        if config.nlist > n:
            raise ValueError(f"nlist={config.nlist} exceeds the number of vectors ({n})")
        base = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, config.nlist, faiss.METRIC_INNER_PRODUCT)
        base.cp.seed = 1234  # deterministic k-means
        base.train(x)
    index = faiss.IndexIDMap(base)
    index.add_with_ids(x, ids)
    return apply_search_params(index, config)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [Q, k], ids int64 [Q, k]) best first; ids are -1 where fewer than k were found."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = _check_matrix(queries, "queries", index.d)
    return index.search(q, k)


def save_index(index: faiss.Index, path: str | os.PathLike, config: IndexConfig | None = None) -> None:
    """faiss.write_index, plus a sidecar <path>.json with the config so search parameters survive reloads."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(p))
    if config is not None:
        p.with_suffix(p.suffix + ".json").write_text(json.dumps(config.to_dict()))


def load_index(path: str | os.PathLike) -> faiss.Index:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"FAISS index not found: {p}")
    index = faiss.read_index(str(p))
    side = p.with_suffix(p.suffix + ".json")
    if side.exists():
        apply_search_params(index, IndexConfig.from_dict(json.loads(side.read_text())))
    return index

