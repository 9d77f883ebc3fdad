"""The training budget every model family and evaluated baseline shares (same examples, same order)."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class TrainingBudget:
    """The same budget for every model: `epochs` passes, each over at most `max_examples_per_epoch` train
    examples (a fresh seeded sample per epoch; None = all), in batches of `batch_size`, at learning rate `lr`."""

    epochs: int = 2
    max_examples_per_epoch: int | None = 20_000
    batch_size: int = 128
    lr: float = 2e-3

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_examples_per_epoch is not None and self.max_examples_per_epoch < 1:
            raise ValueError(f"max_examples_per_epoch must be >= 1 or None, got {self.max_examples_per_epoch}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

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
        per_epoch = min(num_examples, self.max_examples_per_epoch or num_examples)
        return self.epochs * -(-per_epoch // self.batch_size)
