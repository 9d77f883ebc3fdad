"""The recommender interface every evaluated model implements, the shared training budget, and two baselines:
most-popular and SASRec (ID-based causal self-attention, full-softmax next-item cross-entropy).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.sequences import Examples, SequenceDataset, pad_left, windows
from models.budget import EarlyStopping, TrainingBudget


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
    """Items ranked by their interaction count in the training part of each user's sequence."""

    def __init__(self) -> None:
        self.ranking: np.ndarray | None = None

    def fit(self, dataset: SequenceDataset, train_examples: Examples, *, seed: int = 0,
            budget: TrainingBudget | None = None, valid: Examples | None = None) -> None:
        # A user's training events are those up to its last training target (that includes its first event,
        # which is never a target); held-out events after it are not counted.
        last = np.full(dataset.num_users, -1, np.int64)
        np.maximum.at(last, train_examples.users, train_examples.positions)
        counts = np.zeros(dataset.num_items + 1, np.int64)
        for u in np.flatnonzero(last >= 0):
            np.add.at(counts, dataset.user_items[u][:last[u] + 1], 1)
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


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    num_items: int
    max_len: int = 50
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = 0.0  # dropout on [B,H,T,T] cost a third of a CPU step; residual dropout stays

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class SASRecModel(nn.Module):
    """Pre-LN causal transformer over right-aligned item ids; scores = last state . item embeddings (tied)."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if cfg.d_model % cfg.num_heads:
            raise ValueError(f"d_model ({cfg.d_model}) must be divisible by num_heads ({cfg.num_heads})")
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg.d_model, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers))
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.item_emb.weight, std=cfg.d_model ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def states(self, items: torch.Tensor) -> torch.Tensor:
        """items [B,T] right-aligned (0 = padding on the left) -> causal state after every event [B,T,d]."""
        t = items.shape[1]
        real = items != 0
        # Positions from the first real event: a state never depends on later events, so the state after
        # every event of a window is what a history ending there gets (one loss per position is exact).
        position = (real.long().cumsum(dim=1) - 1).clamp(min=0)
        x = self.item_emb(items) * self.cfg.d_model ** 0.5 + self.pos_emb(position)
        x = self.drop(x)
        causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
        # Keys must be real events; a padding query sees itself only, so no row is fully masked (no NaN).
        mask = (causal[None] & real[:, None, :]) | torch.eye(t, dtype=torch.bool, device=items.device)[None]
        mask = mask[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """States [..., d] -> logits over real items [..., N] (column j is item j + 1), tied embeddings."""
        return states @ self.item_emb.weight[1:].T

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Next-item logits after the newest event [B, N]."""
        return self.scores(self.states(items)[:, -1])


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
