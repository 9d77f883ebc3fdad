"""Most-popular and SASRec baselines, the shared budget, and the recommendation checks."""

import numpy as np
import pytest
import torch

from data.sequences import SequenceDataset, leave_last_out
from evaluation.baselines import MostPopular, MostRecent, Recommender, SASRec, check_recommendations
from models.sasrec import SASRecConfig, SASRecModel
from models.budget import TrainingBudget

torch.set_num_threads(1)


def cyclic_dataset(num_users=60, num_items=12, length=14, seed=0) -> SequenceDataset:
    """Each user walks the catalog in a cycle (i -> i+1) from a random start: the next item is learnable."""
    rng = np.random.default_rng(seed)
    items = [(rng.integers(num_items) + np.arange(length)) % num_items + 1 for _ in range(num_users)]
    return SequenceDataset(
        name="cyclic", num_items=num_items, item_attributes={"a": np.zeros(num_items + 1, np.int64)},
        item_texts=[""] * (num_items + 1), user_items=[x.astype(np.int64) for x in items],
        user_behaviors=[np.ones(length, np.int64) for _ in items],
        user_timestamps=[np.arange(length, dtype=np.float64) for _ in items])


def test_budget_batches_and_errors():
    b = TrainingBudget(epochs=2, max_examples_per_epoch=5, batch_size=2, lr=1e-3)
    batches = list(b.batches(8, seed=3))
    assert [len(x) for x in batches] == [2, 2, 1, 2, 2, 1] and b.num_steps(8) == 6
    assert all(len(set(np.concatenate(batches[i:i + 3]).tolist())) == 5 for i in (0, 3))
    assert [x.tolist() for x in batches] == [x.tolist() for x in b.batches(8, seed=3)]  # seeded
    for kw, name in [(dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"),
                     (dict(max_examples_per_epoch=0), "max_examples_per_epoch")]:
        with pytest.raises(ValueError, match=name):
            TrainingBudget(**kw)


def test_most_popular_counts_training_events_only():
    ds = SequenceDataset(
        name="t", num_items=4, item_attributes={"a": np.zeros(5, np.int64)}, item_texts=[""] * 5,
        user_items=[np.array([2, 2, 3, 4, 4]), np.array([3, 1, 4])],
        user_behaviors=[np.ones(5, np.int64), np.ones(3, np.int64)],
        user_timestamps=[np.arange(5.0), np.arange(3.0)])
    split = leave_last_out(ds, max_history=10)
    m = MostPopular()
    m.fit(ds, split.train, seed=0, budget=TrainingBudget())
    # Training events: user 0 -> 2,2,3,4 ; user 1 -> 3,1 (last events held out). Counts 3:2, 2:2, 4:1, 1:1;
    # ties broken by ascending id.
    assert m.recommend(split.test, 4).tolist() == [[2, 3, 1, 4], [2, 3, 1, 4]]
    assert m.recommend([np.array([1])], 2).tolist() == [[2, 3]]
    with pytest.raises(ValueError, match="k must be"):
        m.recommend(split.test, 5)
    assert isinstance(m, Recommender)


def test_recent_popularity_counts_only_the_last_days_of_training():
    day = 86400.0
    ds = SequenceDataset(
        name="t", num_items=4, item_attributes={"a": np.zeros(5, np.int64)}, item_texts=[""] * 5,
        # item 1 is popular long ago, item 3 in the last days; each user's last event is held out
        user_items=[np.array([1, 1, 1, 3, 3, 2]), np.array([1, 1, 4, 3, 2])],
        user_behaviors=[np.ones(6, np.int64), np.ones(5, np.int64)],
        user_timestamps=[np.array([0, 1, 2, 98, 99, 100]) * day, np.array([0, 1, 95, 97, 100]) * day])
    split = leave_last_out(ds, max_history=10)
    everything, recent = MostPopular(), MostPopular(days=30)
    for m in (everything, recent):
        m.fit(ds, split.train, seed=0, budget=TrainingBudget())
    assert everything.recommend(split.test, 2)[0].tolist() == [1, 3]  # 5 x item 1 over all time
    # newest training event: day 99; the window [69, 99] holds 3, 3, 4, 3: item 3 first, then 4, then ties by id
    assert recent.recommend(split.test, 4)[0].tolist() == [3, 4, 1, 2]
    with pytest.raises(ValueError, match="days must be > 0"):
        MostPopular(days=0)


def test_most_recent_puts_distinct_history_first_then_popular():
    ds = SequenceDataset(
        name="t", num_items=5, item_attributes={"a": np.zeros(6, np.int64)}, item_texts=[""] * 6,
        user_items=[np.array([5, 5, 5, 1, 2]), np.array([5, 3])],
        user_behaviors=[np.ones(5, np.int64), np.ones(2, np.int64)],
        user_timestamps=[np.arange(5.0), np.arange(2.0)])
    m = MostRecent()
    m.fit(ds, leave_last_out(ds, max_history=10).train, seed=0, budget=TrainingBudget())
    # Popularity over training events: 5 (x4), then 1 (x1), ties by id; 2 and 3 are held-out test events.
    hist = [np.array([4, 1, 4, 3]), np.array([], np.int64), np.array([5])]
    assert m.recommend(hist, 4).tolist() == [[3, 4, 1, 5], [5, 1, 2, 3], [5, 1, 2, 3]]
    assert m.recommend(hist, 1).tolist() == [[3], [5], [5]]


def test_sasrec_learns_a_cycle_and_returns_valid_lists():
    ds = cyclic_dataset()
    split = leave_last_out(ds, max_history=6)
    model = SASRec(dropout=0.0)  # one pass per window, a loss after every event: fewer, richer steps
    model.fit(ds, split.train, seed=0, budget=TrainingBudget(epochs=15, max_examples_per_epoch=None,
                                                              batch_size=32, lr=5e-3))
    recs = check_recommendations(model.recommend(split.test, 5), len(split.test), 5, ds.num_items)
    top1 = (recs[:, 0] == split.test.targets).mean()
    assert top1 > 0.9, top1  # most-popular would be near 1/12 here
    assert model.losses[-1] < model.losses[0]
    assert isinstance(model, Recommender)


def test_sasrec_all_positions_loss_runs_and_is_seeded():
    ds = cyclic_dataset(num_users=20)
    split = leave_last_out(ds, max_history=5)
    budget = TrainingBudget(epochs=1, max_examples_per_epoch=64, batch_size=16, lr=3e-3)
    runs = []
    for _ in range(2):
        m = SASRec(loss="all")
        m.fit(ds, split.train, seed=7, budget=budget)
        runs.append((m.losses, m.recommend(split.test, 3)))
    assert runs[0][0] == runs[1][0] and (runs[0][1] == runs[1][1]).all()
    with pytest.raises(ValueError, match="loss"):
        SASRec(loss="pairwise")


def test_sasrec_padding_does_not_change_scores():
    torch.manual_seed(0)
    model = SASRecModel(SASRecConfig(num_items=9, max_len=6, dropout=0.0)).eval()
    with torch.no_grad():
        short = model(torch.tensor([[3, 4, 5]]))
        padded = model(torch.tensor([[0, 0, 0, 3, 4, 5]]))
        empty = model(torch.tensor([[0, 0]]))
    assert torch.allclose(short, padded, atol=1e-5)
    assert torch.isfinite(empty).all()


@pytest.mark.parametrize("recs, match", [
    (np.array([[1, 2], [3, 3]]), "duplicate"),
    (np.array([[0, 2], [3, 4]]), "real items"),
    (np.array([[1, 2], [3, 9]]), "real items"),
    (np.array([[1, 2]]), "shape"),
    (np.array([[1.0, 2.0], [3.0, 4.0]]), "integer"),
])
def test_check_recommendations_errors(recs, match):
    with pytest.raises(ValueError, match=match):
        check_recommendations(recs, num_rows=2, k=2, num_items=5)
