"""Journey segmentation: split one user's history into journeys (one shopping intent each) and give every
token its journey id and position inside the journey (GRACE's journey-aware sparse attention uses both).

A new journey starts at an event when the time since the previous event exceeds `max_gap`, or (optionally)
when the intent attribute (e.g. leaf category) differs from the previous event's. numpy only.

Defaults, chosen on the simulator (data/simulator.py; timestamps in seconds): events inside a journey are
5-300 s apart and journeys are separated by 1 h - 3 days, so a 30-minute gap (the classic web-session cut)
plus a leaf-category change recovers the ground-truth journeys (tests/serving/test_journeys.py measures it).
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_MAX_GAP = 1800.0  # seconds


def segment_journeys(categories: np.ndarray, timestamps: np.ndarray, *, max_gap: float,
                     split_on_category_change: bool = True) -> np.ndarray:
    """One user's events, oldest first -> journey index per event, int64 [L], 0-based and nondecreasing.

    categories [L]: the intent attribute of each event's item (ignored when split_on_category_change is
    False). timestamps [L]: nondecreasing. A gap strictly greater than max_gap starts a new journey;
    max_gap=inf disables time splits."""
    ts = np.asarray(timestamps)
    cats = np.asarray(categories)
    if ts.ndim != 1 or cats.ndim != 1:
        raise ValueError(f"categories and timestamps must be 1-D, got {cats.shape} and {ts.shape}")
    if len(ts) != len(cats):
        raise ValueError(f"categories has {len(cats)} events, timestamps {len(ts)}")
    if not max_gap >= 0:  # also rejects NaN
        raise ValueError(f"max_gap must be >= 0 (seconds), got {max_gap}")
    if len(ts) == 0:
        return np.zeros(0, np.int64)
    gaps = np.diff(ts.astype(np.float64))
    if np.any(gaps < 0):
        raise ValueError(f"timestamps must be nondecreasing (oldest first); first decrease at index "
                         f"{int(np.flatnonzero(gaps < 0)[0]) + 1}")
    start = gaps > max_gap
    if split_on_category_change:
        start |= cats[1:] != cats[:-1]
    return np.concatenate([[0], np.cumsum(start)]).astype(np.int64)


def token_journeys(event_journeys: np.ndarray, tokens_per_event: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-event journey ids [L] -> (journey_ids [L * tpe], position_in_journey [L * tpe]), int64, in the
    token order of ItemTokenizer.event_tokens. Position counts tokens from the journey's first token (0)."""
    if tokens_per_event < 1:
        raise ValueError(f"tokens_per_event must be >= 1, got {tokens_per_event}")
    ej = np.asarray(event_journeys, np.int64)
    if ej.ndim != 1:
        raise ValueError(f"event_journeys must be 1-D, got shape {ej.shape}")
    if len(ej) and np.any(np.diff(ej) < 0):
        raise ValueError("event_journeys must be nondecreasing (journeys are contiguous runs of events)")
    journey = np.repeat(ej, tokens_per_event)
    n = len(journey)
    if n == 0:
        return journey, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, journey[1:] != journey[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    return journey, (np.arange(n) - first).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class JourneyConfig:
    intent: str = "leaf_category"  # catalog column whose change means a new intent
    max_gap: float = DEFAULT_MAX_GAP  # seconds of inactivity that end a journey
    split_on_category_change: bool = True

    def __post_init__(self):
        if not self.max_gap >= 0:
            raise ValueError(f"max_gap must be >= 0 (seconds), got {self.max_gap}")

    def intent_column(self, catalog) -> np.ndarray:
        """The item-id-indexed intent column of a data.simulator.Catalog-like object."""
        col = getattr(catalog, self.intent, None)
        if col is None:
            raise ValueError(f"catalog has no column {self.intent!r} to use as the journey intent")
        return np.asarray(col)

    def segment(self, items: np.ndarray, timestamps: np.ndarray, item_intent: np.ndarray) -> np.ndarray:
        """Events given as item ids -> journey index per event; item_intent is indexed by item id."""
        items = np.asarray(items, np.int64)
        if items.size and (items.min() < 0 or items.max() >= len(item_intent)):
            raise ValueError(f"items must be in [0, {len(item_intent) - 1}]")
        return segment_journeys(np.asarray(item_intent)[items], timestamps, max_gap=self.max_gap,
                                split_on_category_change=self.split_on_category_change)
