"""Collaborative item embeddings for semantic IDs: items that users interact with close together in time get
close vectors, so residual k-means (models.grace.semantic_ids) gives them shared code prefixes and GRACE's
decoder learns one distribution over a few coarse codes where an ID model learns one per item.

Positive PMI of co-occurrence within `window` events of the training sequences, factorised by truncated SVD
(the classic count-based equivalent of item2vec). Only training events may be passed in: held-out targets must
not shape the codes. Items without training interactions get a zero vector (their text embedding carries them
when the two are combined, models.grace.recommender)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds


def cooccurrence_embeddings(sequences: list[np.ndarray], num_items: int, dim: int = 64, window: int = 5,
                            seed: int = 0) -> np.ndarray:
    """sequences: item-id arrays (1..num_items) in time order -> float32 [num_items, dim] (row i = item i + 1),
    rows L2-normalised (zero for items never seen)."""
    rows, cols = [], []
    for seq in sequences:
        seq = np.asarray(seq, np.int64)
        for offset in range(1, min(window, len(seq) - 1) + 1):
            rows.append(seq[:-offset])
            cols.append(seq[offset:])
    n = num_items + 1
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
        counts = sp.coo_matrix((np.ones(len(r), np.float64), (r, c)), shape=(n, n)).tocsr()
        counts = counts + counts.T
    else:
        counts = sp.csr_matrix((n, n))
    counts.setdiag(0)
    counts.eliminate_zeros()
    total = counts.sum()
    emb = np.zeros((num_items, dim), np.float32)
    if total == 0:
        return emb
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n, n))
    k = min(dim, n - 2)
    if ppmi.nnz == 0 or k < 1:
        return emb
    v0 = np.random.default_rng(seed).standard_normal(n)
    u, s, _ = svds(ppmi, k=k, v0=v0)
    vectors = (u * np.sqrt(s))[1:]  # drop the padding row
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    emb[:, :k] = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0)
    return emb
