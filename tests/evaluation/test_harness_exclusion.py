"""A dataset that never repeats an item: every model leaves the history out of its ranking (as served), and the
harness refuses a model that does not."""

import numpy as np
import torch

from data.sequences import SequenceDataset, leave_last_out
from evaluation.baselines import MostPopular, MostRecent, SASRec
from evaluation.harness import evaluate_recommender
from models.budget import TrainingBudget


def _dataset(repeats: bool) -> SequenceDataset:
    rng = np.random.default_rng(0)
    users = [rng.permutation(np.arange(1, 13))[:8] for _ in range(30)]
    return SequenceDataset(name="norepeat", num_items=12, item_attributes={"genre": np.arange(13) % 3},
                           item_texts=[""] + [f"item {i}" for i in range(1, 13)], user_items=users,
                           user_behaviors=[np.ones(8, np.int64) for _ in users],
                           user_timestamps=[np.arange(8.0) for _ in users], repeats=repeats)


def test_every_baseline_excludes_the_history_when_asked():
    ds = _dataset(repeats=False)
    split = leave_last_out(ds, max_history=6)
    torch.manual_seed(0)
    for model in (MostPopular(), MostRecent(), SASRec()):
        model.fit(ds, split.train, seed=0, budget=TrainingBudget(epochs=1, batch_size=8))
        ranked = model.recommend(split.test, 5, exclude_history=True)
        assert ranked.shape == (len(split.test), 5)
        for row, history in zip(ranked, split.test.histories):
            assert not np.isin(row, history).any() and (row > 0).all()
        plain = model.recommend(split.test, 5)
        assert any(np.isin(r, h).any() for r, h in zip(plain, split.test.histories)) or isinstance(model, MostPopular)
        metrics = evaluate_recommender(model, split.test, exclude_history=True)
        assert metrics["eval_users"] == len(split.test)
