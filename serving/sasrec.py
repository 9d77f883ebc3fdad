"""SASRec as a served retrieval source: the exported model scores every item after the request's history (one
ONNX Runtime call for all queued requests), and the top-n items the request may receive come back, best first.
Numpy + ONNX Runtime only (serving imports it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.ort import first_real_column, fixed_width, session

SASREC_FILE = "sasrec.onnx"
ITEMS_INPUT = "items"  # the exported graph's one input: [B, T] right-aligned item ids, 0 = padding
SASREC_MAX_LEN_KEY = "max_len"  # the export's metadata: the window the model was trained on (events)


class OnnxSasrec:
    def __init__(self, directory: Path):
        self.session = session(Path(directory) / SASREC_FILE)
        # An export with a dynamic length takes any T <= max_len (its metadata); an older one fixes T = max_len.
        width = fixed_width(self.session)
        self.fixed_length = width is not None
        if self.fixed_length:
            self.max_len = width
        else:  # through BLS (the gpu rendering) there is no metadata: the request limits bound the history to
            # max_history, which a build makes the model's window
            meta = self.session.get_modelmeta() if hasattr(self.session, "get_modelmeta") else None
            self.max_len = int(meta.custom_metadata_map[SASREC_MAX_LEN_KEY]) if meta is not None else None

    def scores(self, hist_items: np.ndarray) -> np.ndarray:
        """[B, L] right-aligned histories -> next-item scores [B, N] (column j is item j + 1); a history longer
        than the model's window keeps its newest max_len events. Columns that are padding in every row are not
        sent (padding in front changes no real event's state), so short histories cost what their length does."""
        items = np.asarray(hist_items, np.int64)
        items = items[:, -self.max_len:] if self.max_len else items
        if self.fixed_length:
            items = np.pad(items, ((0, 0), (self.max_len - items.shape[1], 0)))
        else:
            items = items[:, first_real_column(items):]
        return self.session.run(None, {ITEMS_INPUT: np.ascontiguousarray(items)})[0]

    def retrieve(self, hist_items: np.ndarray, eligible: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """hist_items [B, L], eligible [B, N + 1] booleans -> per row the top-n eligible items and their scores,
        score descending, ties by ascending id."""
        return [top_eligible(row, mask, n) for row, mask in zip(self.scores(hist_items), eligible)]


def top_eligible(scores: np.ndarray, eligible: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """scores [N] of items 1..N, eligible [N + 1] (index 0 = padding) -> (item ids, float32 scores), best first."""
    ids = np.flatnonzero(eligible[1:])
    n = min(n, len(ids))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    candidate = scores[ids]
    part = np.argpartition(-candidate, n - 1)[:n] if n < len(ids) else np.arange(len(ids))
    order = part[np.lexsort((ids[part], -candidate[part]))]
    return (ids[order] + 1).astype(np.int64), candidate[order].astype(np.float32)
