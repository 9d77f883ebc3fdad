"""The recommender interface every evaluated model implements, the shared training budget, and two baselines:
most-popular and SASRec (ID-based causal self-attention, full-softmax next-item cross-entropy).
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from data.sequences import Examples, SequenceDataset, pad_left, training_counts, windows
from models.budget import EarlyStopping, TrainingBudget
from models.sasrec import SASRecConfig, SASRecModel


@runtime_checkable
class Recommender(Protocol):
    def fit(self, dataset: SequenceDataset, train_examples: Examples, *, seed: int,
            budget: TrainingBudget, valid: Examples | None = None) -> None:
        """valid: held-out examples for early stopping (models that train iteratively); others ignore it."""
        ...

    def recommend(self, examples: Examples, k: int, exclude_history: bool = False) -> np.ndarray:
        """Item ids [len(examples), k], best first, for each history of `examples` (its histories, behaviors,
        timestamps and journeys; never its targets): real items (1..N) only, no duplicates in a row. With
        exclude_history (a dataset whose users never repeat an item) no history item is recommended."""
        ...


def _histories(examples: Examples | list[np.ndarray]) -> list[np.ndarray]:
    """The baselines take Examples or a plain list of item-id histories."""
    return examples.histories if isinstance(examples, Examples) else list(examples)


def check_recommendations(recs: np.ndarray, num_rows: int, k: int, num_items: int) -> np.ndarray:
    """Validates a recommend() result; raises ValueError naming what is wrong."""
    recs = np.asarray(recs)
    if recs.shape != (num_rows, k):
        raise ValueError(f"recommendations must have shape ({num_rows}, {k}), got {recs.shape}")
    if not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recommendations must be integer item ids, got {recs.dtype}")
    if recs.size and (recs.min() < 1 or recs.max() > num_items):
        raise ValueError(f"recommended ids must be real items in 1..{num_items} (0 is padding)")
    srt = np.sort(recs, axis=1)
    if k > 1 and (srt[:, 1:] == srt[:, :-1]).any():
        raise ValueError("a recommendation row contains duplicate items")
    return recs.astype(np.int64)


def _check_k(k: int, num_items: int) -> None:
    if not 1 <= k <= num_items:
        raise ValueError(f"k must be in 1..{num_items} (catalog size), got {k}")


class MostPopular:
    """Items ranked by their interaction count in the training part of each user's sequence; with `days`, only
    the training events of the last `days` days before the newest one count (recent popularity: on a global
    time split, the days before the cut)."""

    def __init__(self, days: float | None = None) -> None:
        if days is not None and days <= 0:
            raise ValueError(f"days must be > 0, got {days}")
        self.days = days
        self.ranking: np.ndarray | None = None

    def fit(self, dataset: SequenceDataset, train_examples: Examples, *, seed: int = 0,
            budget: TrainingBudget | None = None, valid: Examples | None = None) -> None:
        counts = training_counts(dataset, train_examples, self.days)
        counts[0] = -1  # padding never ranks
        # Ties by ascending item id, so the ranking is deterministic.
        self.ranking = np.lexsort((np.arange(len(counts)), -counts))[:dataset.num_items]
        self.num_items = dataset.num_items

    def recommend(self, examples: Examples | list[np.ndarray], k: int, exclude_history: bool = False) -> np.ndarray:
        if self.ranking is None:
            raise RuntimeError("MostPopular.recommend called before fit")
        _check_k(k, self.num_items)
        if exclude_history:
            return self._popular_unseen(_histories(examples), k)
        return np.tile(self.ranking[:k], (len(_histories(examples)), 1))

    def _popular_unseen(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        """The most popular items outside each history (0-padded when the history leaves fewer than k)."""
        out = np.zeros((len(histories), k), np.int64)
        for r, h in enumerate(histories):
            row = self.ranking[:k + len(h)]
            row = row[~np.isin(row, h)][:k]
            out[r, :len(row)] = row
        return out


class MostRecent(MostPopular):
    """The user's own distinct history items, newest first, then most-popular ones: measures how much of a
    dataset's score comes from re-interactions (simulator users re-view, cart and buy the same item)."""

    def recommend(self, examples: Examples | list[np.ndarray], k: int, exclude_history: bool = False) -> np.ndarray:
        if self.ranking is None:
            raise RuntimeError("MostRecent.recommend called before fit")
        _check_k(k, self.num_items)
        if exclude_history:  # nothing recent may come back: most-popular outside the history
            return self._popular_unseen(_histories(examples), k)
        out = np.empty((len(_histories(examples)), k), np.int64)
        for r, h in enumerate(_histories(examples)):
            recent = list(dict.fromkeys(np.asarray(h, np.int64)[::-1].tolist()))[:k]
            seen = set(recent)
            fill = [i for i in self.ranking[:k + len(recent)].tolist() if i not in seen][:k - len(recent)]
            out[r] = recent + fill
        return out


class SASRec:
    """ID-based SASRec trained on the given (history -> next item) examples with full-softmax cross-entropy.

    loss="last": one loss term per example, the target after its full history.
    loss="all" (default): the original SASRec objective: one pass per window of max_len events
    (data.sequences.windows), a term after every event (the next event inside the window, then the window's
    target), so every training target is learnt once per epoch.
    With `valid` and budget.patience, validation HR@10 picks the best state (early stopping).
    """

    def __init__(self, max_len: int | None = None, d_model: int = 64, num_layers: int = 2, num_heads: int = 2,
                 dropout: float = 0.2, weight_decay: float = 0.0, eval_batch: int = 256, loss: str = "all"):
        if loss not in ("last", "all"):
            raise ValueError(f"loss must be 'last' or 'all', got {loss!r}")
        self.loss = loss
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1 or None (= longest training history), got {max_len}")
        self.max_len = max_len
        self.kw = dict(d_model=d_model, num_layers=num_layers, num_heads=num_heads, dropout=dropout)
        self.weight_decay, self.eval_batch = weight_decay, eval_batch
        self.model: SASRecModel | None = None
        self.losses: list[float] = []

    def _batch(self, histories: list[np.ndarray]) -> torch.Tensor:
        length = max(1, min(self.model.cfg.max_len, max((len(h) for h in histories), default=1)))
        return torch.from_numpy(pad_left(histories, length))

    def fit(self, dataset: SequenceDataset, train_examples: Examples, *, seed: int,
            budget: TrainingBudget, valid: Examples | None = None) -> None:
        torch.manual_seed(seed)
        max_len = self.max_len or max(1, max((len(h) for h in train_examples.histories), default=1))
        self.model = SASRecModel(SASRecConfig(num_items=dataset.num_items, max_len=max_len, **self.kw))
        opt = torch.optim.AdamW(self.model.parameters(), lr=budget.lr, weight_decay=self.weight_decay)
        if self.loss == "all":
            train_examples = windows(train_examples)
        targets = torch.from_numpy(train_examples.targets - 1)
        stopper = EarlyStopping(budget, valid, self.model, self.recommend, len(train_examples),
                                exclude_history=not dataset.repeats, num_items=dataset.num_items)
        self.model.train()
        self.losses = []
        started, seen = time.perf_counter(), 0
        for step, idx in enumerate(budget.batches(len(train_examples), seed), start=1):
            items = self._batch([train_examples.histories[i] for i in idx])
            if self.loss == "last":
                loss = F.cross_entropy(self.model(items), targets[idx])
            else:
                # Targets per position: the next event in the window, then the example's own target.
                nxt = torch.cat([items[:, 1:] - 1, targets[idx, None]], dim=1)
                keep = items != 0
                loss = F.cross_entropy(self.model.scores(self.model.states(items)[keep]), nxt[keep])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            self.losses.append(loss.item())
            seen += len(idx) if self.loss == "last" else int(keep.sum())
            if stopper.after_step(step, seen):
                break
        self.model.eval()
        seconds = time.perf_counter() - started - stopper.eval_seconds
        self.info = {"train_steps": len(self.losses), "train_seconds": round(seconds, 1), "targets_seen": seen,
                     "targets_per_second": round(seen / max(seconds, 1e-9), 1), **stopper.finish()}

    @torch.no_grad()
    def recommend(self, examples: Examples | list[np.ndarray], k: int, exclude_history: bool = False) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("SASRec.recommend called before fit")
        histories = _histories(examples)
        _check_k(k, self.model.cfg.num_items)
        out = []
        for i in range(0, len(histories), self.eval_batch):
            chunk = histories[i:i + self.eval_batch]
            logits = self.model(self._batch(chunk))
            if exclude_history:
                for r, h in enumerate(chunk):
                    logits[r, torch.as_tensor(np.asarray(h, np.int64) - 1)] = -torch.inf
            top = torch.topk(logits, k, dim=1)
            out.append(torch.where(top.values.isfinite(), top.indices + 1, 0).numpy())
        return np.concatenate(out) if out else np.zeros((0, k), np.int64)
