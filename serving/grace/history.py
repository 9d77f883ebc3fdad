"""A request's history -> GRACE encoder inputs: chain-of-thought tokens plus each token's journey id and its
position inside the journey. Numpy only: the served `grace_retrieve` step and training share it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from serving.grace.journeys import segment_journeys, token_journeys
from serving.grace.tokenizer import PAD, ItemTokenizer

TOKENIZER_FILE, INTENT_FILE, JOURNEYS_FILE = "tokenizer.npz", "item_intent.npy", "journeys.json"
HISTORY_FILES = (TOKENIZER_FILE, INTENT_FILE, JOURNEYS_FILE)


@dataclasses.dataclass(frozen=True)
class HistoryEncoder:
    tokenizer: ItemTokenizer
    item_intent: np.ndarray  # int64 [N+1]: the attribute whose change starts a new journey (e.g. leaf category)
    max_gap: float  # a pause longer than this (timestamp units) also starts a new journey
    split_on_category_change: bool = True

    def encode(self, items: np.ndarray, behaviors: np.ndarray, timestamps: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[L] events -> tokens, journey_ids, journey_pos, each int64 [L * tokens_per_event]."""
        items = np.asarray(items, np.int64)
        journeys = segment_journeys(self.item_intent[items], np.asarray(timestamps, np.float64),
                                    max_gap=self.max_gap, split_on_category_change=self.split_on_category_change)
        journey_ids, journey_pos = token_journeys(journeys, self.tokenizer.tokens_per_event)
        tokens = self.tokenizer.event_tokens(items, behaviors)
        return tokens, journey_ids.astype(np.int64), journey_pos.astype(np.int64)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.tokenizer.save(directory / TOKENIZER_FILE)
        np.save(directory / INTENT_FILE, self.item_intent)
        (directory / JOURNEYS_FILE).write_text(json.dumps(
            {"max_gap": self.max_gap, "split_on_category_change": self.split_on_category_change}))

    @classmethod
    def load(cls, directory: Path) -> "HistoryEncoder":
        directory = Path(directory)
        cfg = json.loads((directory / JOURNEYS_FILE).read_text())
        return cls(ItemTokenizer.load(directory / TOKENIZER_FILE), np.load(directory / INTENT_FILE), **cfg)


def left_pad(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Encoded histories -> left-padded batch {tokens, valid, journey_ids (-1 pad), journey_pos}."""
    t = max(len(r[0]) for r in rows)
    b = len(rows)
    out = {"tokens": np.full((b, t), PAD, np.int64), "valid": np.zeros((b, t), np.float32),
           "journey_ids": np.full((b, t), -1, np.int64), "journey_pos": np.zeros((b, t), np.int64)}
    for r, (tokens, jid, jpos) in enumerate(rows):
        n = len(tokens)
        out["tokens"][r, t - n:] = tokens
        out["valid"][r, t - n:] = 1.0
        out["journey_ids"][r, t - n:] = jid
        out["journey_pos"][r, t - n:] = jpos
    return out
