"""Request-level steps of `recommend`, in numpy, shared by the served Triton models and the in-process
reference: validation and features (both retrieval steps validate the request), the eligibility mask, candidate
merge, calibrated top-k.

Only the neural parts differ between the two (ONNX Runtime when served, torch in the reference).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from serving.contract import RequestError, ServingLimits
from serving.graph import CATEGORY_IDS, EXCLUDE_ITEM_IDS, K
from serving.catalog import ItemIds
from serving.grace.history import HistoryEncoder
from serving.validation import check_ids, integer_array, validate_history

@dataclasses.dataclass(frozen=True)
class HistoryFeatures:
    # GRACE's encoder inputs, each int64 [L * tokens_per_event] (None where the step does not encode the history):
    enc_tokens: np.ndarray | None  # the CoT tokens
    enc_journey_ids: np.ndarray | None  # journey index of each token
    enc_journey_pos: np.ndarray | None  # position of the token inside its journey
    hist_items: np.ndarray  # int64 [max_history], right-aligned, 0 = pad
    hist_behaviors: np.ndarray  # int64 [max_history]
    exclude_ids: np.ndarray  # int64 [>=1]; always holds the padding item 0
    allowed_categories: np.ndarray  # int64 [>=1]; every category when the request names none


def validate_and_featurize(history_encoder: HistoryEncoder | None, limits: ServingLimits, catalog: ItemIds, item_ids,
                           behaviors, timestamps, k, exclude_item_ids=None, category_ids=None) -> HistoryFeatures:
    """Checks one request (each argument a 1-D array, optional ones may be None) and builds its features; the
    request's item ids are the dataset's, the features' internal. Without a history encoder, no encoder tokens."""
    items, behs, ts = validate_history(item_ids, behaviors, timestamps, max_history=limits.max_history,
                                       catalog=catalog, event_names=limits.event_names)
    n = len(items)
    k_arr = integer_array(K.name, k)
    if len(k_arr) != 1:
        raise RequestError(K.name, f"expected exactly one value, got {len(k_arr)}")
    if not 1 <= int(k_arr[0]) <= limits.max_k:
        raise RequestError(K.name, f"{int(k_arr[0])} is out of range; valid range is 1..{limits.max_k}")

    exclude = np.zeros(1, np.int64)
    if exclude_item_ids is not None:
        ex = integer_array(EXCLUDE_ITEM_IDS.name, exclude_item_ids)
        if len(ex) > limits.max_exclude:
            raise RequestError(EXCLUDE_ITEM_IDS.name, f"has {len(ex)} ids; the maximum is {limits.max_exclude}")
        exclude = np.unique(np.concatenate([exclude, catalog.to_internal(EXCLUDE_ITEM_IDS.name, ex)]))
    if limits.exclude_history:  # the dataset never repeats an item (its dataset.json says "repeats": false)
        exclude = np.unique(np.concatenate([exclude, items]))
    allowed = np.arange(limits.num_categories, dtype=np.int64)
    if category_ids is not None:
        cats = integer_array(CATEGORY_IDS.name, category_ids)
        if len(cats) == 0:
            raise RequestError(CATEGORY_IDS.name, "is empty; omit it to allow every category")
        if len(cats) > limits.num_categories:
            raise RequestError(CATEGORY_IDS.name, f"has {len(cats)} ids; the maximum is {limits.num_categories}")
        check_ids(CATEGORY_IDS.name, cats, 0, limits.num_categories - 1, "category")
        allowed = np.unique(cats.astype(np.int64))

    hist_items = np.zeros(limits.max_history, np.int64)
    hist_behaviors = np.zeros(limits.max_history, np.int64)
    hist_items[-n:], hist_behaviors[-n:] = items, behs
    tokens, journey_ids, journey_pos = (None, None, None) if history_encoder is None else \
        history_encoder.encode(items, behs, ts)
    return HistoryFeatures(enc_tokens=tokens, enc_journey_ids=journey_ids, enc_journey_pos=journey_pos,
                           hist_items=hist_items,
                           hist_behaviors=hist_behaviors, exclude_ids=exclude, allowed_categories=allowed)


def eligible_mask(top_category: np.ndarray, exclude_ids: np.ndarray, allowed_categories: np.ndarray) -> np.ndarray:
    """Boolean [N+1] of items a request may receive (padding item 0 never)."""
    mask = np.isin(top_category, allowed_categories)
    mask[exclude_ids] = False
    mask[0] = False
    return mask


def merge_candidates(source_items: list[np.ndarray], eligible: np.ndarray, max_candidates: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Union of the sources' candidates in source order (an item is credited to the first source that found it),
    deduplicated and filtered; padded with item 0 and source -1. Sources index `source_items`."""
    items = np.concatenate([np.asarray(s, np.int64).reshape(-1) for s in source_items])
    sources = np.concatenate([np.full(np.size(s), i) for i, s in enumerate(source_items)]).astype(np.int32)
    keep = eligible[items]
    items, sources = items[keep], sources[keep]
    _, first = np.unique(items, return_index=True)
    first = np.sort(first)[:max_candidates]
    cand = np.zeros(max_candidates, np.int64)
    src = np.full(max_candidates, -1, np.int32)
    cand[:len(first)], src[:len(first)] = items[first], sources[first]
    return cand, src


def final_order(relevance: np.ndarray, pctr: np.ndarray, items: np.ndarray, merge_weight: float) -> np.ndarray:
    """Candidate indices, best first: the ranker's order (relevance, ties by pCTR, then item id) mixed with the
    merge order (the retrieval sources' own, candidates arrive in it) by rank: merge_weight 0 is the ranker's
    order, 1 the merge order. The build picks the weight on validation users (exporters ordering stage)."""
    by_ranker = np.empty(len(items), np.float64)
    by_ranker[np.lexsort((items, -pctr, -relevance))] = np.arange(len(items))
    mixed = (1.0 - merge_weight) * by_ranker + merge_weight * np.arange(len(items))
    return np.lexsort((by_ranker, mixed))


def calibrated_top_k(logits: np.ndarray, relevance: np.ndarray, cand_items: np.ndarray, cand_sources: np.ndarray,
                     calibrate, k: int, source_names: tuple[str, ...], merge_weight: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-k real candidates in final_order, each with its calibrated pCTR."""
    real = cand_items > 0
    logits, relevance, items, sources = logits[real], relevance[real], cand_items[real], cand_sources[real]
    pctr = calibrate(logits)
    order = final_order(relevance, pctr, items, merge_weight)[:k]
    names = np.array([source_names[s].encode() for s in sources[order]], dtype=object)
    return items[order], pctr[order].astype(np.float32), names
