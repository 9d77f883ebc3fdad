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


class ItemIds:
    """The dataset's item id of every internal id: int64 [N+1], row 0 = padding, rows 1..N strictly increasing
    (the build numbers items in the order of their ids), so a lookup is one binary search."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, np.int64)
        if ids.ndim != 1 or len(ids) < 2 or np.any(np.diff(ids[1:]) <= 0):
            raise ValueError(f"{ITEM_IDS_FILE}: expected int64 [N+1] with rows 1..N strictly increasing")
        self.ids = ids

    @property
    def num_items(self) -> int:
        return len(self.ids) - 1

    def save(self, directory: Path) -> None:
        np.save(Path(directory) / ITEM_IDS_FILE, self.ids)

    @classmethod
    def load(cls, directory: Path) -> "ItemIds":
        return cls(np.load(Path(directory) / ITEM_IDS_FILE))

    def to_internal(self, field: str, external: np.ndarray) -> np.ndarray:
        """Internal ids of the dataset's ids; an id not in the catalog is a RequestError naming it."""
        external = np.asarray(external, np.int64).reshape(-1)
        known = self.ids[1:]
        pos = np.minimum(np.searchsorted(known, external), len(known) - 1)
        missing = known[pos] != external
        if missing.any():
            raise RequestError(field, f"unknown item id {int(external[missing][0])}; not one of the "
                                      f"{self.num_items} items of the dataset")
        return pos + 1

    def to_external(self, internal: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(internal, np.int64)]
