"""CLIP-embedding nearest neighbours for `recommend`: the request's history becomes one query vector (CLIP
embeddings of its items, weighted by behaviour and recency), searched in the FAISS item index restricted to
the items the request may receive. Numpy + faiss only (serving imports it)."""

from __future__ import annotations

import faiss
import numpy as np

from serving.contract import DEFAULT_EVENT_NAMES

ITEM_INDEX_FILE, ITEM_EMBEDDINGS_FILE = "clip_items.faiss", "clip_item_embeddings.npy"
# Weight of each event in the kNN query vector by name (removals count against); other names weigh 1.
EVENT_WEIGHTS = {"view": 1.0, "add_to_cart": 2.0, "remove_from_cart": -0.5, "purchase": 3.0}
KNN_RECENCY_DECAY = 0.9


def query_weights(event_names: tuple[str, ...] = DEFAULT_EVENT_NAMES) -> np.ndarray:
    """float32 [1 + len(event_names)] indexed by behaviour code (0 = padding: weight 0)."""
    return np.array([0.0] + [EVENT_WEIGHTS.get(name, 1.0) for name in event_names], np.float32)


BEHAVIOR_WEIGHTS = query_weights()  # the default vocabulary's: [0, 1, 2, -0.5, 3]


def history_query(item_embeddings: np.ndarray, hist_items: np.ndarray, hist_behaviors: np.ndarray,
                  weights: np.ndarray = BEHAVIOR_WEIGHTS) -> np.ndarray:
    """Right-aligned history (0 = pad) -> L2-normalised query [1, E]; item_embeddings is indexed by item id,
    `weights` by behaviour code (query_weights of the served vocabulary)."""
    valid = hist_items > 0
    age = np.cumsum(valid[::-1])[::-1] - 1  # 0 for the newest event
    w = weights[hist_behaviors] * (KNN_RECENCY_DECAY ** age) * valid
    q = (w @ item_embeddings[hist_items]).astype(np.float32)
    return (q / max(float(np.linalg.norm(q)), 1e-12))[None]


def clip_retrieve(index: faiss.Index, item_embeddings: np.ndarray, hist_items: np.ndarray,
                  hist_behaviors: np.ndarray, eligible: np.ndarray, n: int, weights: np.ndarray = BEHAVIOR_WEIGHTS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Top-n eligible items by inner product with the history query; the eligibility filter runs inside the
    index search (an ID selector), so filtered-out items never take a slot, and an exact search over the
    eligible items covers filters that the approximate search cannot fill."""
    ids = np.flatnonzero(eligible).astype(np.int64)
    n = min(n, len(ids))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    selector = faiss.IDSelectorBatch(ids)
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    if isinstance(base, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=base.nprobe)
    elif isinstance(base, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=base.hnsw.efSearch)
    else:
        params = faiss.SearchParameters(sel=selector)
    query = history_query(item_embeddings, hist_items, hist_behaviors, weights)
    scores, items = index.search(query, n, params=params)
    keep = items[0] >= 0
    if keep.sum() == n:
        found, found_scores = items[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)
        order = np.lexsort((found, -found_scores))  # score desc, then id asc: the exact fallback's order too
        return found[order], found_scores[order]
    # The probed lists held fewer than n eligible items (a selective filter, e.g. categories far from the
    # history): search the eligible items exactly. Selective filters make that set small.
    exact = item_embeddings[ids] @ query[0]
    top = np.lexsort((ids, -exact))[:n]  # score desc, then id asc
    return ids[top], exact[top].astype(np.float32)
