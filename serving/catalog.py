"""The catalog table every filtering step reads: each item's top-level category (row 0 = padding item)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CATEGORY_FILE = "item_top_category.npy"


def save_top_category(directory: Path, top_category: np.ndarray) -> None:
    np.save(Path(directory) / CATEGORY_FILE, np.asarray(top_category, np.int64))


def load_top_category(directory: Path) -> np.ndarray:
    return np.load(Path(directory) / CATEGORY_FILE)
