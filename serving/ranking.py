"""The served ranker: the exported ONNX ranker scoring a batch of (history, candidates) rows with its two heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.ort import first_real_column, fixed_width, session

ORDERING_FILE = "ordering.json"  # how much the merge order weighs against the ranker in the final order
RANKER_FILE = "ranker.onnx"
RANKER_OUTPUTS = ("logits", "relevance")  # CTR logits and next-interaction relevance, [B, candidates] each
# the merge's artifact: the retrieval sources by name, highest priority first (picked on validation users)
MERGE_PRIORITY_FILE = "source_priority.json"


class OnnxRanker:
    def __init__(self, directory: Path):
        self.session = session(Path(directory) / RANKER_FILE)
        # An export whose history length is dynamic takes a batch's real columns only (padding in front scores
        # the same there); an older one fixes the width, and gets it.
        self.fixed_width = fixed_width(self.session)

    def __call__(self, hist_items: np.ndarray, hist_behaviors: np.ndarray, cand_items: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """[B, L], [B, L], [B, C] -> (ctr logits [B, C], relevance [B, C])."""
        hist_items, hist_behaviors = np.asarray(hist_items, np.int64), np.asarray(hist_behaviors, np.int64)
        if self.fixed_width is None:
            first = first_real_column(hist_items)
            hist_items, hist_behaviors = hist_items[:, first:], hist_behaviors[:, first:]
        arrays = (hist_items, hist_behaviors, cand_items)  # the exported graph's inputs, in export order
        feeds = {i.name: np.ascontiguousarray(a, np.int64) for i, a in zip(self.session.get_inputs(), arrays)}
        logits, relevance = self.session.run(None, feeds)
        return logits, relevance
