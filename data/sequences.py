"""Sequential-recommendation datasets in one shape, and the leave-last-out split.

Items are 1..num_items (0 = padding). Each user has chronological arrays of items, behaviour ids and
timestamps. Item attributes are ordered coarse -> fine so a CoT tokenizer can walk them as a path.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SequenceDataset:
    name: str
    num_items: int
    item_attributes: dict[str, np.ndarray]  # coarse -> fine, each int64 [N+1], 0-based values, row 0 unused
    item_texts: list[str]  # [N+1], row 0 ""
    user_items: list[np.ndarray]  # per user, int64 chronological item ids in 1..N
    user_behaviors: list[np.ndarray]  # per user, int64 behaviour ids in 1..num_behaviors-1
    user_timestamps: list[np.ndarray]  # per user, float64, non-decreasing
    behavior_names: tuple[str, ...] = ("pad", "interact")  # index = behaviour id; 0 is padding
    user_journeys: list[np.ndarray] | None = None  # per user, ground-truth journey ids when known (simulator)
    # False: users never interact with an item twice (MovieLens ratings); models and the evaluation then drop
    # a user's history from its rankings, as the server does.
    repeats: bool = True
    # The dataset's own id of each internal item (int64 [N+1], row 0 = 0) when it is not 1..N (data.dataset).
    external_item_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.num_items
        if n < 1:
            raise ValueError(f"num_items must be >= 1, got {n}")
        for key, col in self.item_attributes.items():
            if col.shape != (n + 1,) or col.dtype != np.int64:
                raise ValueError(f"item_attributes[{key!r}] must be int64 [{n + 1}], got {col.dtype} {col.shape}")
            if col[1:].min(initial=0) < 0:
                raise ValueError(f"item_attributes[{key!r}] must be 0-based (>= 0)")
        if self.external_item_ids is not None and self.external_item_ids.shape != (n + 1,):
            raise ValueError(f"external_item_ids must be [{n + 1}], got {self.external_item_ids.shape}")
        if len(self.item_texts) != n + 1:
            raise ValueError(f"item_texts must have num_items + 1 = {n + 1} rows, got {len(self.item_texts)}")
        lists = [self.user_items, self.user_behaviors, self.user_timestamps]
        if self.user_journeys is not None:
            lists.append(self.user_journeys)
        if len({len(x) for x in lists}) != 1:
            raise ValueError("user_items, user_behaviors, user_timestamps (and user_journeys) need one entry per user")
        for u, (items, behs, ts) in enumerate(zip(self.user_items, self.user_behaviors, self.user_timestamps)):
            if not (len(items) == len(behs) == len(ts)):
                raise ValueError(f"user {u}: items, behaviors and timestamps differ in length")
            if len(items) and (items.min() < 1 or items.max() > n):
                raise ValueError(f"user {u}: item ids must be in 1..{n}")
            if len(behs) and (behs.min() < 1 or behs.max() >= len(self.behavior_names)):
                raise ValueError(f"user {u}: behaviour ids must be in 1..{len(self.behavior_names) - 1}")
            if len(ts) > 1 and np.any(np.diff(ts) < 0):
                raise ValueError(f"user {u}: timestamps must be non-decreasing (chronological order)")

    @property
    def num_users(self) -> int:
        return len(self.user_items)

    @property
    def num_behaviors(self) -> int:
        """Including padding (id 0), like data.simulator.NUM_BEHAVIORS."""
        return len(self.behavior_names)

    @property
    def num_events(self) -> int:
        return int(sum(len(x) for x in self.user_items))

    def attribute_cardinalities(self) -> dict[str, int]:
        return {k: int(v[1:].max()) + 1 for k, v in self.item_attributes.items()}

    def stats(self) -> dict:
        lengths = np.array([len(x) for x in self.user_items])
        return {"name": self.name, "users": self.num_users, "items": self.num_items, "events": self.num_events,
                "mean_length": round(float(lengths.mean()), 1), "median_length": float(np.median(lengths)),
                "behaviors": list(self.behavior_names[1:]), "attributes": self.attribute_cardinalities()}


def from_world(world) -> SequenceDataset:
    """Adapter for data.simulator.World: top_category, leaf_category, brand, price_bucket; event behaviours."""
    from data.simulator import BEHAVIOR_NAMES, NUM_BEHAVIORS

    cat = world.catalog
    bounds = np.searchsorted(world.event_user, np.arange(world.config.num_users + 1))
    spans = [(int(bounds[u]), int(bounds[u + 1])) for u in range(world.config.num_users)]
    return SequenceDataset(
        name="sim",
        num_items=cat.num_items,
        item_attributes={"top_category": cat.top_category.astype(np.int64),
                         "leaf_category": cat.leaf_category.astype(np.int64),
                         "brand": cat.brand.astype(np.int64),
                         "price_bucket": cat.price_bucket.astype(np.int64)},
        item_texts=list(cat.titles),
        user_items=[world.event_item[lo:hi].astype(np.int64) for lo, hi in spans],
        user_behaviors=[world.event_behavior[lo:hi].astype(np.int64) for lo, hi in spans],
        user_timestamps=[world.event_timestamp[lo:hi].astype(np.float64) for lo, hi in spans],
        behavior_names=("pad",) + tuple(BEHAVIOR_NAMES[b] for b in range(1, NUM_BEHAVIORS)),
        user_journeys=[world.event_journey[lo:hi].astype(np.int64) for lo, hi in spans],
    )


def from_dataset(dataset) -> SequenceDataset:
    """Adapter for a dataset of the contract (data.dataset.Dataset), through its encoding for the build
    (data.build_data): internal item ids 1..N in the order of the dataset's ids (kept in `external_item_ids`),
    the category path's levels then brand and price bucket as attributes, the dataset's event vocabulary."""
    from data.build_data import encode

    return encode(dataset).sequences()


@dataclasses.dataclass
class Examples:
    """(history -> target) pairs. Histories are views into the dataset's per-user arrays (no copies)."""

    users: np.ndarray  # int64 [M]
    positions: np.ndarray  # int64 [M]: index of the target in its user's sequence
    histories: list[np.ndarray]  # item ids before the target, chronological, at most max_history
    behaviors: list[np.ndarray]
    timestamps: list[np.ndarray]
    journeys: list[np.ndarray] | None
    targets: np.ndarray  # int64 [M]
    target_behaviors: np.ndarray  # int64 [M]
    target_timestamps: np.ndarray  # float64 [M]

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx) -> "Examples":
        idx = np.asarray(idx, np.int64)
        pick = lambda xs: [xs[i] for i in idx.tolist()]  # noqa: E731
        return Examples(users=self.users[idx], positions=self.positions[idx], histories=pick(self.histories),
                        behaviors=pick(self.behaviors), timestamps=pick(self.timestamps),
                        journeys=None if self.journeys is None else pick(self.journeys),
                        targets=self.targets[idx], target_behaviors=self.target_behaviors[idx],
                        target_timestamps=self.target_timestamps[idx])


@dataclasses.dataclass
class Split:
    train: Examples
    valid: Examples | None
    test: Examples
    max_history: int


def _examples(dataset: SequenceDataset, pairs: list[tuple[int, int]], max_history: int) -> Examples:
    users = np.array([u for u, _ in pairs], np.int64)
    pos = np.array([p for _, p in pairs], np.int64)
    starts = [max(0, p - max_history) for _, p in pairs]
    j = dataset.user_journeys
    return Examples(
        users=users, positions=pos,
        histories=[dataset.user_items[u][s:p] for (u, p), s in zip(pairs, starts)],
        behaviors=[dataset.user_behaviors[u][s:p] for (u, p), s in zip(pairs, starts)],
        timestamps=[dataset.user_timestamps[u][s:p] for (u, p), s in zip(pairs, starts)],
        journeys=None if j is None else [j[u][s:p] for (u, p), s in zip(pairs, starts)],
        targets=np.array([dataset.user_items[u][p] for u, p in pairs], np.int64),
        target_behaviors=np.array([dataset.user_behaviors[u][p] for u, p in pairs], np.int64),
        target_timestamps=np.array([dataset.user_timestamps[u][p] for u, p in pairs], np.float64),
    )


def leave_last_out(dataset: SequenceDataset, max_history: int, validation: bool = False) -> Split:
    """Test: each user's last event, predicted from the events before it. Train: every earlier event (from the
    second on) predicted from its prefix. With `validation`, each user's second-last event is held out too
    (history before it -> it) and is not a training target. Histories keep the last `max_history` events.

    Users with too few events to give a test example (and, with validation, at least one held-out valid
    example) are skipped for that part; their remaining events still train.
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    held = 2 if validation else 1
    train, valid, test = [], [], []
    for u, items in enumerate(dataset.user_items):
        n = len(items)
        if n >= 2:
            test.append((u, n - 1))
        if validation and n >= 3:
            valid.append((u, n - 2))
        # Targets 1..n-held-1: the first event has no history to predict from.
        train.extend((u, p) for p in range(1, n - held))
    if not test:
        raise ValueError(f"dataset {dataset.name!r} has no user with >= 2 events; nothing to test")
    return Split(train=_examples(dataset, train, max_history),
                 valid=_examples(dataset, valid, max_history) if validation else None,
                 test=_examples(dataset, test, max_history), max_history=max_history)


def time_split(dataset: SequenceDataset, max_history: int, test_quantile: float = 0.8,
               valid_quantile: float | None = 0.7) -> Split:
    """A global time split: one cut for every user at the `test_quantile` of all event times. Test: each user's
    first event at or after the cut, predicted from the events before it. Validation (valid_quantile not None):
    the same at the earlier cut, for events before the test cut. Train: every event before the earlier cut
    (from each user's second event on). No model sees an event from the test period, unlike leave-last-out,
    where one user's test event can be older than another's training events."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    times = np.concatenate([t for t in dataset.user_timestamps if len(t)]) if dataset.num_users else np.zeros(0)
    if not len(times):
        raise ValueError(f"dataset {dataset.name!r} has no events")
    test_cut = float(np.quantile(times, test_quantile))
    valid_cut = None if valid_quantile is None else float(np.quantile(times, valid_quantile))
    if valid_cut is not None and not valid_cut < test_cut:
        raise ValueError(f"valid_quantile {valid_quantile} must give an earlier cut than test_quantile {test_quantile}")
    train_end = test_cut if valid_cut is None else valid_cut
    train, valid, test = [], [], []
    for u, ts in enumerate(dataset.user_timestamps):
        first_test = int(np.searchsorted(ts, test_cut, side="left"))
        if 1 <= first_test < len(ts):
            test.append((u, first_test))
        if valid_cut is not None:
            first_valid = int(np.searchsorted(ts, valid_cut, side="left"))
            if 1 <= first_valid < first_test:
                valid.append((u, first_valid))
        train.extend((u, p) for p in range(1, int(np.searchsorted(ts, train_end, side="left"))))
    if not test:
        raise ValueError(f"dataset {dataset.name!r} has no user with events on both sides of the time cut")
    return Split(train=_examples(dataset, train, max_history),
                 valid=_examples(dataset, valid, max_history) if valid_cut is not None else None,
                 test=_examples(dataset, test, max_history), max_history=max_history)


def training_counts(dataset: SequenceDataset, train: Examples, days: float | None = None) -> np.ndarray:
    """int64 [N+1]: each item's training events (index 0, the padding item, 0). A user's training events are
    those up to its last training target (its first event included, though never a target); held-out events
    after it are not counted. With `days`, only the events of the last `days` days before the newest training
    event count (recent popularity: on a global time split, the days before the cut)."""
    if days is not None and days <= 0:
        raise ValueError(f"days must be > 0, got {days}")
    last = np.full(dataset.num_users, -1, np.int64)
    np.maximum.at(last, train.users, train.positions)
    counts = np.zeros(dataset.num_items + 1, np.int64)
    users = np.flatnonzero(last >= 0)
    since = -np.inf
    if days is not None and len(users):  # the window ends at the newest training event
        newest = max(float(dataset.user_timestamps[u][last[u]]) for u in users)
        since = newest - days * 86400.0
    for u in users:
        items, times = dataset.user_items[u][:last[u] + 1], dataset.user_timestamps[u][:last[u] + 1]
        np.add.at(counts, items[times >= since], 1)
    counts[0] = 0
    return counts


def windows(train: Examples) -> Examples:
    """The training examples one pass of a model that supervises every position needs: per user, the examples
    whose targets are L = max_history apart counting back from the user's last training target. A window's
    history plus its target holds L consecutive targets (each history event predicts the next), so every
    training target appears in exactly one window (the first window's first event is no target, as in
    leave_last_out)."""
    if len(train) == 0:
        return train
    length = max(len(h) for h in train.histories)
    last = np.full(int(train.users.max()) + 1, -1, np.int64)
    np.maximum.at(last, train.users, train.positions)
    return train.subset(np.flatnonzero((last[train.users] - train.positions) % max(1, length) == 0))


def next_items(examples: Examples, slots: int) -> np.ndarray:
    """int64 [M, slots]: after each history event, the item that follows it (the next history event, then the
    example's target), right-aligned like pad_left(histories, slots); 0 where a slot holds no event."""
    out = np.zeros((len(examples), slots), np.int64)
    for r, (h, target) in enumerate(zip(examples.histories, examples.targets)):
        n = min(len(h), slots)
        if n:
            out[r, slots - n:] = np.append(np.asarray(h[len(h) - n + 1:], np.int64), target)
    return out


def pad_left(histories: list[np.ndarray], length: int, pad: int = 0) -> np.ndarray:
    """[M] variable-length int arrays -> int64 [M, length], right-aligned (newest last), keeping the newest."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    out = np.full((len(histories), length), pad, np.int64)
    for r, h in enumerate(histories):
        h = np.asarray(h, np.int64)[-length:]
        if len(h):
            out[r, length - len(h):] = h
    return out
