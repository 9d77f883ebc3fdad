"""The catalog tables the served steps read: each item's top-level category (filters), and the dataset's item
ids (the API speaks them; internal ids are 1..N, row 0 = padding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.contract import RequestError

CATEGORY_FILE = "item_top_category.npy"
ITEM_IDS_FILE = "item_ids.npy"


def save_top_category(directory: Path, top_category: np.ndarray) -> None:
    np.save(Path(directory) / CATEGORY_FILE, np.asarray(top_category, np.int64))


def load_top_category(directory: Path) -> np.ndarray:
    return np.load(Path(directory) / CATEGORY_FILE)


class IdMap:
    """The dataset's ids of a table's internal ids, strictly increasing (the build numbers rows in the order of
    their ids), so a lookup is one binary search. Items: internal ids 1..N (row 0 of the file is the padding
    item); campaigns: 0..C-1."""

    def __init__(self, ids: np.ndarray, noun: str, first: int):
        ids = np.asarray(ids, np.int64)
        if ids.ndim != 1 or len(ids) <= first or np.any(np.diff(ids[first:]) <= 0):
            raise ValueError(f"{noun} ids: expected int64 [{'N+1' if first else 'N'}] strictly increasing ids")
        self.ids, self.noun, self.first = ids, noun, first

    def __len__(self) -> int:
        return len(self.ids) - self.first

    def to_internal(self, field: str, external: np.ndarray) -> np.ndarray:
        """Internal ids of the dataset's ids; an id not in the table is a RequestError naming it."""
        external = np.asarray(external, np.int64).reshape(-1)
        known = self.ids[self.first:]
        pos = np.minimum(np.searchsorted(known, external), len(known) - 1)
        missing = known[pos] != external
        if missing.any():
            raise RequestError(field, f"unknown {self.noun} id {int(external[missing][0])}; not one of the "
                                      f"{len(known)} {self.noun}s of the dataset")
        return pos + self.first

    def to_external(self, internal: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(internal, np.int64)]


class ItemIds(IdMap):
    """Item ids: int64 [N+1], row 0 = padding."""

    def __init__(self, ids: np.ndarray):
        super().__init__(ids, "item", first=1)

    @property
    def num_items(self) -> int:
        return len(self)

    def save(self, directory: Path) -> None:
        np.save(Path(directory) / ITEM_IDS_FILE, self.ids)

    @classmethod
    def load(cls, directory: Path) -> "ItemIds":
        return cls(np.load(Path(directory) / ITEM_IDS_FILE))
