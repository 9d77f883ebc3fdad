"""The training budget every model family and evaluated baseline shares (same examples, same order), and
the early stopping they share: validation HR@10 on held-out examples, the best state kept, a learning curve."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingBudget:
    """The same budget for every model: `epochs` passes, each over at most `max_examples_per_epoch` train
    examples (a fresh seeded sample per epoch; None = all), in batches of `batch_size`, at learning rate `lr`."""

    epochs: int = 2
    max_examples_per_epoch: int | None = 20_000
    batch_size: int = 128
    lr: float = 2e-3
    # Early stopping (with a validation split): stop after `patience` validations without a better HR@10 and
    # keep the best state; `epochs` is then the cap. 0 = train the whole budget, no validation.
    patience: int = 0
    eval_every: int = 0  # steps between validations; 0 = once per epoch
    eval_users: int = 1000  # validation examples scored (a fixed sample); 0 = all

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_examples_per_epoch is not None and self.max_examples_per_epoch < 1:
            raise ValueError(f"max_examples_per_epoch must be >= 1 or None, got {self.max_examples_per_epoch}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("patience", "eval_every", "eval_users"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def steps_per_epoch(self, num_examples: int) -> int:
        return -(-min(num_examples, self.max_examples_per_epoch or num_examples) // self.batch_size)

    def batches(self, num_examples: int, seed: int) -> Iterator[np.ndarray]:
        """Index batches for the whole run; a model that uses this sees exactly the budgeted examples, in
        the same order as every other model trained with the same seed."""
        if num_examples < 1:
            raise ValueError("no training examples")
        rng = np.random.default_rng(seed)
        per_epoch = min(num_examples, self.max_examples_per_epoch or num_examples)
        for _ in range(self.epochs):
            order = rng.permutation(num_examples)[:per_epoch]
            for i in range(0, per_epoch, self.batch_size):
                yield order[i:i + self.batch_size]

    def num_steps(self, num_examples: int) -> int:
        return self.epochs * self.steps_per_epoch(num_examples)


def hit_rate(ranked: np.ndarray, targets: np.ndarray, k: int = 10) -> float:
    """HR@k of rankings [M, >=k]."""
    ranked = np.asarray(ranked)[:, :k]
    return float((ranked == np.asarray(targets)[:, None]).any(axis=1).mean()) if len(ranked) else 0.0


class EarlyStopping:
    """Validation HR@k during training: `recommend(examples, k, exclude_history) -> [M, k]` scores a fixed
    sample of `valid` every `eval_every` steps (or epoch); the best state of `module` is kept and restored by
    `finish`; `curve` is the learning curve (step, examples seen, train seconds, validation HR@k). Inactive without a validation
    split or with budget.patience == 0: then `finish` keeps the last state."""

    def __init__(self, budget: TrainingBudget, valid, module, recommend: Callable, num_train: int,
                 exclude_history: bool = False, k: int = 10, num_items: int | None = None):
        self.active = budget.patience > 0 and valid is not None and len(valid) > 0
        self.budget, self.module, self.recommend, self.k = budget, module, recommend, k
        self.every = budget.eval_every or budget.steps_per_epoch(num_train)
        if self.active:
            n = len(valid)
            idx = np.arange(n) if not budget.eval_users or budget.eval_users >= n else np.sort(
                np.random.default_rng(12345).choice(n, budget.eval_users, replace=False))
            self.valid = valid.subset(idx)
            self.exclude_history = exclude_history
            if num_items is not None:
                self.k = min(self.k, num_items)
        self.best, self.best_step, self.best_state, self.bad = -1.0, 0, None, 0
        self.curve: list[dict] = []
        self.started = time.perf_counter()
        self.eval_seconds = 0.0

    def after_step(self, step: int, examples_seen: int) -> bool:
        """Call after each optimiser step (1-based); True when training should stop."""
        if not self.active or step % self.every:
            return False
        t0 = time.perf_counter()
        was_training = self.module.training
        self.module.eval()
        ranked = self.recommend(self.valid, self.k, exclude_history=self.exclude_history)
        if was_training:
            self.module.train()
        hr = hit_rate(ranked, self.valid.targets, self.k)
        self.eval_seconds += time.perf_counter() - t0
        train_s = time.perf_counter() - self.started - self.eval_seconds
        self.curve.append({"step": step, "examples": examples_seen, "train_seconds": round(train_s, 2),
                           f"valid_hr@{self.k}": round(hr, 5)})
        log.info("step %d: validation HR@%d %.4f (best %.4f)", step, self.k, hr, self.best)
        if hr > self.best:
            self.best, self.best_step, self.bad = hr, step, 0
            self.best_state = copy.deepcopy(self.module.state_dict())
            self.best_seconds = train_s
            return False
        self.bad += 1
        return self.bad >= self.budget.patience

    def finish(self) -> dict:
        """Restores the best state; what the run reports about its validation."""
        if not self.active:
            return {}
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)
        return {f"valid_hr@{self.k}": round(self.best, 5), "best_step": self.best_step,
                "seconds_to_best": round(getattr(self, "best_seconds", 0.0), 1),
                "validation_seconds": round(self.eval_seconds, 1), "curve": self.curve}
