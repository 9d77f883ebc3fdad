"""Hybrid chain-of-thought tokenization of items and interactions (GRACE-shaped).

Every item has a token path, coarse to fine: top category, leaf category, brand, price bucket, and a
disambiguation code that makes the path unique. An interaction is its behaviour token followed by the
item's path. All levels share one vocabulary, laid out as contiguous ranges:

    0 PAD | 1 BOS | behaviours (5) | top categories | leaf categories | brands | price buckets | codes

The path table is an artifact (npz) so that serving and training use the same mapping.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

PAD, BOS = 0, 1
PATH_LEVELS = ("top_category", "leaf_category", "brand", "price_bucket", "code")
PATH_LENGTH = len(PATH_LEVELS)
TOKENS_PER_EVENT = 1 + PATH_LENGTH


@dataclasses.dataclass(frozen=True)
class ItemTokenizer:
    item_paths: np.ndarray  # int64 [N+1, PATH_LENGTH], global token ids; row 0 (padding item) is all PAD
    level_offsets: np.ndarray  # int64 [PATH_LENGTH + 1]: level l owns tokens [offsets[l], offsets[l+1])
    behavior_offset: int
    num_behaviors: int

    @property
    def vocab_size(self) -> int:
        return int(self.level_offsets[-1])

    @property
    def num_items(self) -> int:
        return len(self.item_paths) - 1

    @classmethod
    def from_catalog(cls, top: np.ndarray, leaf: np.ndarray, brand: np.ndarray, price_bucket: np.ndarray,
                     num_behaviors: int = 5) -> "ItemTokenizer":
        """Build paths from per-item attribute columns (index 0 = padding item, ignored)."""
        attrs = np.stack([top[1:], leaf[1:], brand[1:], price_bucket[1:]], axis=1).astype(np.int64)
        # Disambiguation code: rank of the item among items sharing the same attribute path.
        code = np.zeros(len(attrs), np.int64)
        seen: dict[tuple, int] = {}
        for i, key in enumerate(map(tuple, attrs)):
            code[i] = seen.get(key, 0)
            seen[key] = code[i] + 1
        local = np.concatenate([attrs, code[:, None]], axis=1)
        sizes = local.max(axis=0) + 1
        behavior_offset = BOS + 1
        first = behavior_offset + num_behaviors
        offsets = np.concatenate([[first], first + np.cumsum(sizes)]).astype(np.int64)
        paths = local + offsets[:-1]
        paths = np.concatenate([np.full((1, PATH_LENGTH), PAD, np.int64), paths])
        return cls(item_paths=paths, level_offsets=offsets, behavior_offset=behavior_offset,
                   num_behaviors=num_behaviors)

    def save(self, path: Path) -> None:
        """Writes exactly `path` (np.savez would append .npz to a name without it)."""
        with open(path, "wb") as f:
            np.savez(f, item_paths=self.item_paths, level_offsets=self.level_offsets,
                     behavior_offset=self.behavior_offset, num_behaviors=self.num_behaviors)

    @classmethod
    def load(cls, path: Path) -> "ItemTokenizer":
        z = np.load(path)
        return cls(item_paths=z["item_paths"], level_offsets=z["level_offsets"],
                   behavior_offset=int(z["behavior_offset"]), num_behaviors=int(z["num_behaviors"]))

    def event_tokens(self, items: np.ndarray, behaviors: np.ndarray) -> np.ndarray:
        """[L] events -> [L * TOKENS_PER_EVENT] tokens: behaviour token then the item path, per event."""
        beh = (self.behavior_offset + np.asarray(behaviors, np.int64))[:, None]
        return np.concatenate([beh, self.item_paths[np.asarray(items, np.int64)]], axis=1).reshape(-1)

    def path_to_item(self) -> dict[tuple[int, ...], int]:
        return {tuple(p): i for i, p in enumerate(self.item_paths[1:].tolist(), start=1)}

    def build_trie(self) -> dict[tuple[int, ...], np.ndarray]:
        """Prefix -> sorted allowed next tokens, for every proper prefix of every real item path."""
        children: dict[tuple[int, ...], set[int]] = {}
        for p in self.item_paths[1:].tolist():
            for depth in range(PATH_LENGTH):
                children.setdefault(tuple(p[:depth]), set()).add(p[depth])
        return {k: np.array(sorted(v), np.int64) for k, v in children.items()}
