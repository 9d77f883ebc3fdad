"""Beam search over item token paths, constrained by a prefix trie so that only real items come out.

Backend-agnostic: `step(beams [W,S], parents [W] | None) -> log-probs [W,V]` is either the torch model or
the ONNX decoder step, which lets the in-process reference and the served model share the search itself.
`parents[i]` is the row of the previous call's beams that beam i extends (None on the first call), which is
what a decoder with a KV cache needs to reorder its cache; `CachedStep` does that bookkeeping.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np

from serving.grace.tokenizer import BOS

StepFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
# run(last_tokens [W], past [layers,2,W,H,S,hd]) -> (log_probs [W,V], present [layers,2,W,H,S+1,hd])
CachedRunFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class CachedStep:
    """Adapts a one-token decoder with a self-attention KV cache to the beam-search step protocol."""

    def __init__(self, run: CachedRunFn, empty_cache: np.ndarray):
        self.run, self.empty_cache, self.present = run, empty_cache, None

    def __call__(self, beams: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
        past = self.empty_cache if parents is None else self.present[:, :, parents]
        log_probs, self.present = self.run(np.ascontiguousarray(beams[:, -1]), np.ascontiguousarray(past))
        return log_probs


class TrieNormalizedStep:
    """A beam-search step whose log-probabilities are renormalised over the trie's children of each beam's prefix:
    log p(t) - logsumexp over the allowed t' of log p(t'). What a model trained with trie_loss (the softmax over
    the children of the target's prefix) was trained to score; disallowed tokens get -inf."""

    def __init__(self, step: StepFn, trie: dict[tuple[int, ...], np.ndarray]):
        self.step, self.trie = step, trie

    def __call__(self, beams: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
        log_probs = np.asarray(self.step(beams, parents), np.float64)
        out = np.full_like(log_probs, -np.inf)
        for b, prefix in enumerate(beams[:, 1:].tolist()):  # beams, not examples: what the search loops over
            allowed = self.trie[tuple(prefix)]
            lp = log_probs[b, allowed]
            top = lp.max()
            out[b, allowed] = lp - (top + np.log(np.exp(lp - top).sum()))
        return out


def prefix_log_mass(path_to_item: dict[tuple[int, ...], int], weights: np.ndarray) -> dict[tuple[int, ...], float]:
    """log of the summed item weights under every prefix of the trie (the empty prefix included): an item prior
    p(item) ∝ weights[item] factorises along a path as the ratios of these masses, one factor per token."""
    mass: dict[tuple[int, ...], float] = {}
    for path, item in path_to_item.items():
        w = float(weights[item])
        if not w > 0:
            raise ValueError(f"item {item}: prior weight must be > 0, got {w}")
        for depth in range(len(path) + 1):
            mass[path[:depth]] = mass.get(path[:depth], 0.0) + w
    return {prefix: float(np.log(m)) for prefix, m in mass.items()}


def top_prior_items(weights: np.ndarray, path_to_item: dict[tuple[int, ...], int], n: int) -> np.ndarray:
    """The n catalog items of largest prior weight, ties to the smaller id: the prior's own candidates
    (GraceTrainConfig.popularity_prior_candidates), which join the beam's."""
    items = np.array(sorted(path_to_item.values()), np.int64)
    w = np.asarray(weights, np.float64)[items]
    return items[np.lexsort((items, -w))][:n]


class PriorStep:
    """A beam-search step plus `weight` x the log of an item prior, spread over the path: token t after a prefix
    adds weight * (log mass(prefix + t) - log mass(prefix)) (prefix_log_mass), so a whole path adds weight x
    log p_prior(item) and a beam's score stays a sum the search can rank part-way. The product of the model
    and the prior ** weight: a popularity prior whose weight is chosen on validation."""

    def __init__(self, step: StepFn, trie: dict[tuple[int, ...], np.ndarray], log_mass: dict[tuple[int, ...], float],
                 weight: float):
        self.step, self.trie, self.weight = step, trie, float(weight)
        self.bias = {prefix: weight * (np.array([log_mass[(*prefix, t)] for t in allowed.tolist()]) - log_mass[prefix])
                     for prefix, allowed in trie.items()}

    def over(self, step: StepFn) -> "PriorStep":
        """The same prior (its bias table shared, not rebuilt) over another step: one per search."""
        other = copy.copy(self)
        other.step = step
        return other

    def __call__(self, beams: np.ndarray, parents: np.ndarray | None) -> np.ndarray:
        log_probs = np.array(self.step(beams, parents), np.float64)
        for b, prefix in enumerate(beams[:, 1:].tolist()):
            allowed = self.trie[tuple(prefix)]
            log_probs[b, allowed] += self.bias[tuple(prefix)]
        return log_probs


def constrained_beam_search(step: StepFn, trie: dict[tuple[int, ...], np.ndarray],
                            path_to_item: dict[tuple[int, ...], int], beam_width: int,
                            exclude: "set[int] | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (item_ids [<=W], scores [<=W]) sorted by descending path log-probability. Items in `exclude`
    (e.g. a history a dataset never repeats) are never completed, and no beam enters a prefix whose items are
    all excluded, so the W beams go to other items."""
    path_length = len(next(iter(path_to_item)))
    blocked: set[tuple[int, ...]] = set()
    if exclude:
        sizes, item_paths = _trie_index(path_to_item)
        excluded_under: dict[tuple[int, ...], int] = {}
        for item in exclude:  # only the excluded items' paths: no pass over the catalog per request
            path = item_paths.get(item)
            for depth in range(1, path_length + 1) if path is not None else ():
                excluded_under[path[:depth]] = excluded_under.get(path[:depth], 0) + 1
        blocked = {prefix for prefix, n in excluded_under.items() if n == sizes[prefix]}
    beams = np.full((1, 1), BOS, np.int64)
    scores = np.zeros(1, np.float64)
    parents = None
    for _ in range(path_length):
        log_probs = step(beams, parents)
        cand_beam, cand_token, cand_score = [], [], []
        for b, prefix in enumerate(beams[:, 1:].tolist()):
            allowed = trie[tuple(prefix)]
            if blocked:
                allowed = np.array([t for t in allowed.tolist() if (*prefix, t) not in blocked], np.int64)
            cand_beam.append(np.full(len(allowed), b))
            cand_token.append(allowed)
            cand_score.append(scores[b] + log_probs[b, allowed].astype(np.float64))
        cand_beam_a = np.concatenate(cand_beam)
        cand_token_a = np.concatenate(cand_token)
        cand_score_a = np.concatenate(cand_score)
        # Stable sort on (-score): ties keep trie order, so every backend breaks them the same way.
        keep = np.argsort(-cand_score_a, kind="stable")[:beam_width]
        parents = cand_beam_a[keep]
        beams = np.concatenate([beams[parents], cand_token_a[keep, None]], axis=1)
        scores = cand_score_a[keep]
    items = np.array([path_to_item[tuple(p)] for p in beams[:, 1:].tolist()], np.int64)
    return items, scores.astype(np.float32)


_INDEX: dict[int, tuple[dict, tuple[dict, dict]]] = {}


def _trie_index(path_to_item: dict[tuple[int, ...], int]) -> tuple[dict[tuple[int, ...], int], dict[int, tuple]]:
    """Items under every prefix of the trie, and each item's path (computed once per path_to_item mapping)."""
    cached = _INDEX.get(id(path_to_item))
    if cached is not None and cached[0] is path_to_item:
        return cached[1]
    sizes: dict[tuple[int, ...], int] = {}
    for path in path_to_item:
        for depth in range(1, len(path) + 1):
            sizes[path[:depth]] = sizes.get(path[:depth], 0) + 1
    index = (sizes, {item: path for path, item in path_to_item.items()})
    _INDEX[id(path_to_item)] = (path_to_item, index)
    return index


class TrieIndex:
    """The prefix trie as CSR arrays, so that a search step expands every beam of every request with a few numpy
    calls: node 0 is the empty prefix; the children of node n are child_token/child_node[offsets[n]:offsets[n+1]]
    in the trie's (sorted) order; a leaf (a whole path) has its item in leaf_item."""

    def __init__(self, trie: dict[tuple[int, ...], np.ndarray], path_to_item: dict[tuple[int, ...], int]):
        self.path_length = len(next(iter(path_to_item)))
        node_of: dict[tuple[int, ...], int] = {(): 0}
        order = [()]
        for prefix in order:  # breadth first: children get ids after their parent
            if len(prefix) < self.path_length:
                for token in trie[prefix].tolist():
                    node_of[(*prefix, token)] = len(order)
                    order.append((*prefix, token))
        counts = np.array([len(trie[p]) if len(p) < self.path_length else 0 for p in order], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.child_token = np.concatenate([trie[p] for p in order if len(p) < self.path_length]).astype(np.int64)
        self.child_node = np.array([node_of[(*p, t)] for p in order if len(p) < self.path_length
                                    for t in trie[p].tolist()], np.int64)
        # Nodes are numbered as the edges are listed (breadth first): the edge into node m is m - 1 (score_paths).
        assert np.array_equal(self.child_node, np.arange(1, len(self.child_node) + 1))
        self.leaf_item = np.zeros(len(order), np.int64)
        for path, item in path_to_item.items():
            self.leaf_item[node_of[tuple(path)]] = item
        self.item_nodes = {item: [node_of[tuple(path[:d])] for d in range(1, self.path_length + 1)]
                           for path, item in path_to_item.items()}  # the nodes on each item's path
        self.size = np.zeros(len(order), np.int64)  # items under each node
        for nodes in self.item_nodes.values():
            self.size[nodes] += 1

    def edge_prior(self, weights: np.ndarray, weight: float) -> np.ndarray:
        """float64 per edge: weight * (log mass(child) - log mass(parent)), the PriorStep's bias of that edge
        (the mass of a node: the summed item weights under it)."""
        leaves = np.flatnonzero(self.leaf_item > 0)  # node 0 is the root, never a leaf
        mass = np.zeros(len(self.leaf_item), np.float64)
        for item, nodes in self.item_nodes.items():
            w = float(weights[item])
            if not w > 0:
                raise ValueError(f"item {item}: prior weight must be > 0, got {w}")
            mass[nodes] += w
        mass[0] = mass[leaves].sum()
        parent = np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))
        return weight * (np.log(mass[self.child_node]) - np.log(mass[parent]))

    def blocked_nodes(self, exclude: "set[int] | None") -> np.ndarray:
        """Nodes whose items are all excluded: no beam may enter them (sorted node ids)."""
        if not exclude:
            return np.zeros(0, np.int64)
        nodes = [n for item in exclude for n in self.item_nodes.get(item, ())]
        if not nodes:
            return np.zeros(0, np.int64)
        ids, hits = np.unique(np.array(nodes, np.int64), return_counts=True)
        return ids[hits == self.size[ids]]


# run(last_tokens [N], past [layers,2,N,H,S,hd]) -> (log_probs [N,V], present [layers,2,N,H,S+1,hd]), where the N
# rows are R requests x G beam slots (request r owns rows r*G .. r*G+G-1; the decoder reads G from N // R). A
# level-restricted decoder answers only the tokens of the level it decodes: column j is token level_offsets[S] + j.
BatchedRunFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _edges_out(index: "TrieIndex", nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trie edges leaving each of `nodes`, one run per node in order: (the position in `nodes` each edge
    leaves from, the edge ids, the run lengths)."""
    starts = index.offsets[nodes]
    counts = index.offsets[nodes + 1] - starts
    owner = np.repeat(np.arange(len(nodes)), counts)
    edge = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    return owner, edge, counts


def _runs_logsumexp(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """logsumexp of each consecutive run of `values` (run lengths `counts`); 0 for an empty run."""
    out = np.zeros(len(counts))
    has = counts > 0
    if has.any():
        starts = (np.cumsum(counts) - counts)[has]
        top = np.maximum.reduceat(values, starts)
        owner = np.repeat(np.arange(len(starts)), counts[has])
        out[has] = top + np.log(np.add.reduceat(np.exp(values - top[owner]), starts))
    return out


def batched_beam_search(run: BatchedRunFn, empty_cache: np.ndarray, index: TrieIndex, beam_width: int,
                        excludes: "list[set[int] | None]", level_offsets: "np.ndarray | None" = None,
                        trie_normalized: bool = False, edge_bias: "np.ndarray | None" = None
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """constrained_beam_search for R requests at once: one decoder call per step for every beam of every request
    (each request keeps G = the widest request's beam count slots; unused slots are padding whose answers are
    ignored), the trie expanded with CSR arrays and every request's beams ranked together (no per-request
    Python). Per request it keeps the same candidates in the same order (beams in order, tokens in trie order,
    stable sort on score), hence the same result. level_offsets: the run answers each level's tokens only (the
    tokenizer's level_offsets), else every token of the vocabulary. trie_normalized: each beam's scores
    renormalised over its trie children, as TrieNormalizedStep does (a model trained with trie_loss). edge_bias:
    added to each edge's step score after that (TrieIndex.edge_prior: an item prior, as PriorStep adds)."""
    r = len(excludes)
    num_nodes = len(index.offsets) - 1
    # (request, node) pairs no beam may enter, as one sorted key per pair
    blocked = np.concatenate([q * num_nodes + index.blocked_nodes(e) for q, e in enumerate(excludes)] or
                             [np.zeros(0, np.int64)])
    request = np.arange(r)  # each beam's request, beams of one request consecutive and best first
    nodes = np.zeros(r, np.int64)  # each beam's trie node
    scores = np.zeros(r, np.float64)
    rows = np.arange(r)  # each beam's row in the decoder call
    last = np.full(r, BOS, np.int64)
    past = np.repeat(empty_cache, r, axis=2) if empty_cache.shape[2] == 1 else empty_cache
    for depth in range(index.path_length):
        log_probs, present = run(last, np.ascontiguousarray(past))
        first_token = 0 if level_offsets is None else int(level_offsets[depth])  # the token of column 0
        beam, edge, counts = _edges_out(index, nodes)
        child, token, owner = index.child_node[edge], index.child_token[edge], request[beam]
        step_lp = log_probs[rows[beam], token - first_token].astype(np.float64)
        if trie_normalized:  # every beam's children are one run of the edges
            step_lp = step_lp - _runs_logsumexp(step_lp, counts)[beam]
        if edge_bias is not None:
            step_lp = step_lp + edge_bias[edge]
        score = scores[beam] + step_lp
        if len(blocked):
            keep = ~np.isin(owner * num_nodes + child, blocked)
            beam, child, token, owner, score = beam[keep], child[keep], token[keep], owner[keep], score[keep]
        # Per request, candidates by descending score; lexsort is stable, so ties keep candidate order.
        order = np.lexsort((-score, owner))
        owner = owner[order]
        rank = np.arange(len(order)) - np.searchsorted(owner, owner)  # place inside its request
        top = rank < beam_width
        kept = order[top]
        request, nodes, scores, rank = owner[top], child[kept], score[kept], rank[top]
        parents, tokens = rows[beam[kept]], token[kept]
        # Next call: request q's beams at rows q * slots + rank; a request's unused slots repeat its first beam
        # (or row q * width and BOS when it has none), and their answers are never read.
        width = len(last) // r
        per_request = np.bincount(request, minlength=r)
        slots = max(1, int(per_request.max()))
        rows = request * slots + rank
        if per_request.min() == slots:  # every request fills its slots: no padding rows
            parent, last = parents, tokens
        else:
            first = np.minimum(np.searchsorted(request, np.arange(r)), max(len(request) - 1, 0))
            has = per_request > 0
            parent = np.repeat(np.where(has, parents[first] if len(parents) else 0, np.arange(r) * width), slots)
            last = np.repeat(np.where(has, tokens[first] if len(tokens) else BOS, BOS), slots)
            parent[rows], last[rows] = parents, tokens
        past = present[:, :, parent]
    bounds = np.searchsorted(request, np.arange(r + 1))
    return [(index.leaf_item[nodes[a:b]], scores[a:b].astype(np.float32)) for a, b in zip(bounds, bounds[1:])]


def score_paths(run: BatchedRunFn, empty_cache: np.ndarray, index: TrieIndex, candidates: "list[np.ndarray]",
                level_offsets: "np.ndarray | None" = None, trie_normalized: bool = False,
                edge_bias: "np.ndarray | None" = None) -> list[np.ndarray]:
    """The score batched_beam_search gives each candidate item's whole path (teacher-forced: the path's tokens fed
    step by step), for R requests' candidate lists at once: float64 per candidate, in the lists' order. Each
    request's rows are padded to the longest list with its first candidate (answers never read)."""
    r = len(candidates)
    slots = max(1, max((len(c) for c in candidates), default=1))
    some_item = next(iter(index.item_nodes))  # the padding of a request without candidates
    flat = np.concatenate([np.resize(np.asarray(c, np.int64), slots) if len(c) else np.full(slots, some_item)
                           for c in candidates])
    # Node ids follow the edges' order (breadth first), so the edge into node m is m - 1.
    path_nodes = np.array([index.item_nodes[i] for i in flat.tolist()], np.int64).reshape(len(flat), -1)
    rows = len(flat)
    scores = np.zeros(rows, np.float64)
    nodes = np.zeros(rows, np.int64)
    last = np.full(rows, BOS, np.int64)
    past = np.repeat(empty_cache, rows, axis=2)
    for depth in range(index.path_length):
        log_probs, past = run(last, np.ascontiguousarray(past))
        first_token = 0 if level_offsets is None else int(level_offsets[depth])
        edge = path_nodes[:, depth] - 1
        token = index.child_token[edge]
        step_lp = log_probs[np.arange(rows), token - first_token].astype(np.float64)
        if trie_normalized:  # over the children of the node the path leaves, as the search renormalises
            row, children, counts = _edges_out(index, nodes)
            child_lp = log_probs[row, index.child_token[children] - first_token].astype(np.float64)
            step_lp = step_lp - _runs_logsumexp(child_lp, counts)
        if edge_bias is not None:
            step_lp = step_lp + edge_bias[edge]
        scores += step_lp
        nodes, last = path_nodes[:, depth], token
    scores = scores.reshape(r, slots)
    return [scores[q, : len(c)] for q, c in enumerate(candidates)]
