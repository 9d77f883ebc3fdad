"""The ranker trains from a dataset (data.build_data.BuildData): from organic impressions when the dataset has
them, else from its events with popularity-sampled negatives. A tiny simulator dataset, written once."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from data.build_data import load_build_data
from data.simulator import SimConfig, simulate, write_dataset
from models.ranking.train import (LABEL_IMPRESSIONS, RankerTrainConfig, build_ranker, event_examples,
                                  sample_negatives, split_users, train_ranker)

SMALL = SimConfig(num_items=80, num_users=300, num_campaigns=8)
CFG = RankerTrainConfig(epochs=4, batch_size=128, max_examples=3000, max_history=16)
METRIC_KEYS = {"label", "source", "candidates_per_example", "examples", "epochs_run", "best_epoch",
               "best_validation_log_loss", "validation_log_loss_per_epoch", "train_seconds", "test_uncalibrated",
               "test_calibrated", "relevance"}


def _fake_fashion_mnist(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), np.arange(n, dtype=np.int64) % 10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: small batches gain nothing from more, and the CI cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset_dirs(tmp_path_factory):
    """(with impressions, the same without impressions.parquet)."""
    root = tmp_path_factory.mktemp("ranker")
    with_imp = root / "with_impressions"
    write_dataset(simulate(SMALL), with_imp, train_images=_fake_fashion_mnist(), campaign_impressions=(4, 2, 2))
    without = root / "events_only"
    shutil.copytree(with_imp, without)
    (without / "impressions.parquet").unlink()
    return with_imp, without


@pytest.fixture(scope="module")
def with_impressions(dataset_dirs):
    return load_build_data(dataset_dirs[0], check_images=False)


@pytest.fixture(scope="module")
def events_only(dataset_dirs):
    return load_build_data(dataset_dirs[1], check_images=False)


@pytest.fixture(scope="module")
def trained_on_impressions(with_impressions):
    return train_ranker(with_impressions, CFG)


@pytest.fixture(scope="module")
def trained_on_events(events_only):
    return train_ranker(events_only, CFG)


def _check_early_stopping(metrics: dict, cfg: RankerTrainConfig):
    losses = metrics["validation_log_loss_per_epoch"]
    assert metrics["examples"]["validation"] > 0
    assert 1 <= metrics["epochs_run"] == len(losses) <= cfg.epochs
    assert metrics["best_epoch"] == int(np.argmin(losses)) + 1
    assert metrics["best_validation_log_loss"] == pytest.approx(min(losses), abs=1e-4)
    assert math.isfinite(metrics["best_validation_log_loss"])
    if metrics["epochs_run"] < cfg.epochs:  # stopped early: the last `patience` epochs did not improve
        assert metrics["epochs_run"] - metrics["best_epoch"] == cfg.patience


def _check_calibrator(calibrator):
    assert len(calibrator.x) >= 2
    assert np.all(np.diff(calibrator.x) > 0) and np.all(np.diff(calibrator.y) >= 0)
    probs = calibrator(np.linspace(-20, 20, 401))
    assert np.all(np.diff(probs) >= 0) and probs.min() > 0 and probs.max() < 1


def test_trains_from_impressions(with_impressions, trained_on_impressions):
    model, calibrator, metrics = trained_on_impressions
    assert with_impressions.has_impressions
    assert set(metrics) == METRIC_KEYS
    assert metrics["label"] == LABEL_IMPRESSIONS and metrics["source"] == "impressions"
    assert metrics["candidates_per_example"] == 1
    ex = metrics["examples"]
    assert sum(ex.values()) == min(CFG.max_examples, len(with_impressions.impression_user))
    assert ex["train"] > ex["calibration"] > 0 and ex["test"] > 0
    assert metrics["test_calibrated"]["auc"] > 0.5 and metrics["test_uncalibrated"]["auc"] > 0.5
    assert metrics["test_calibrated"]["ece_15"] < 0.1
    _check_early_stopping(metrics, CFG)
    _check_calibrator(calibrator)
    # Scored independently of the training code: the test users' impressions against the dataset's clicks.
    d = with_impressions
    test = split_users(d.num_users, CFG.seed, CFG.validation_fraction)[d.impression_user] == 2
    users, times = d.impression_user[test], d.impression_time[test]
    items, behs, _ = d.histories_before(users, times, CFG.max_history)
    with torch.no_grad():
        logits = model(torch.from_numpy(items), torch.from_numpy(behs),
                       torch.from_numpy(d.impression_item[test][:, None]))[0][:, 0].numpy()
    clicks = d.impression_click[test]
    assert roc_auc_score(clicks, logits) > 0.5
    assert calibrator(logits).mean() == pytest.approx(clicks.mean(), abs=0.05)  # pCTR means click rate
    # The relevance head learnt the next interaction from the events: well above chance (1 in 1 + negatives).
    rel = metrics["relevance"]
    assert rel["source"] == "events" and rel["test_positive_ranked_first"] > 2 * rel["chance"]


def test_ranker_sized_by_the_dataset(with_impressions, trained_on_impressions):
    model = trained_on_impressions[0]
    cat = with_impressions.catalog
    assert (model.cfg.num_items, model.cfg.num_leaf_categories, model.cfg.num_brands, model.cfg.num_price_buckets,
            model.cfg.num_behaviors) == (cat.num_items, cat.num_leaf_categories, cat.num_brands,
                                         cat.num_price_buckets, with_impressions.num_behaviors)
    assert model.item_emb.num_embeddings == cat.num_items + 1
    assert torch.equal(model.item_leaf, torch.from_numpy(cat.leaf_category))
    assert not model.training


def test_trains_from_events_without_impressions(events_only, trained_on_events):
    model, calibrator, metrics = trained_on_events
    assert events_only.impression_user is None
    assert set(metrics) == METRIC_KEYS | {"test_positive_ranked_first"}
    assert metrics["source"] == "events"
    assert "next interaction" in metrics["label"] and f"{CFG.negatives} sampled items" in metrics["label"]
    assert "click" not in metrics["label"]
    assert metrics["candidates_per_example"] == 1 + CFG.negatives
    assert sum(metrics["examples"].values()) == CFG.max_examples  # more positive events than the cap
    assert metrics["test_calibrated"]["auc"] > 0.8
    assert metrics["test_positive_ranked_first"] > 0.5  # chance: 1 / (1 + negatives)
    # Calibrated on the same construction: the mean score is about the share of positives.
    assert metrics["test_calibrated"]["ece_15"] < 0.05
    _check_early_stopping(metrics, CFG)
    _check_calibrator(calibrator)


def test_event_examples_history_strictly_before_each_positive(events_only):
    cfg = dataclasses.replace(CFG, max_examples=500)
    ex = event_examples(events_only, cfg, np.random.default_rng(0))
    assert len(ex) == 500
    assert np.all(ex.labels[:, 0] == 1) and np.all(ex.labels[:, 1:] == 0)
    assert np.all(ex.candidates[:, 1:] != ex.candidates[:, :1]) and ex.candidates.min() >= 1
    assert np.all(ex.hist_items[:, -1] > 0)  # every positive has at least one earlier event
    # The simulator's timestamps are distinct within a user: the history is what histories_before gives for
    # the positive's own time, and the positive is that user's next event.
    d = events_only
    key = d.event_user * (int(d.event_timestamp.max()) + 1) + d.event_timestamp
    assert np.all(np.diff(key) > 0)
    hits = np.zeros(len(ex), bool)
    for r in range(len(ex)):
        items, _, times = d.user_history(int(ex.user[r]))
        pos = np.flatnonzero(items == ex.candidates[r, 0])
        for p in pos[pos > 0]:
            h, b, _ = d.histories_before(ex.user[r:r + 1], times[p:p + 1], cfg.max_history)
            if np.array_equal(h[0], ex.hist_items[r]) and np.array_equal(b[0], ex.hist_behaviors[r]):
                hits[r] = True
    assert hits.all()


def test_negatives_follow_popularity_and_never_hit_the_positive():
    rng = np.random.default_rng(0)
    popularity = np.array([0, 50, 0, 30, 20, 0], np.int64)  # items 2 and 5 never seen
    positives = rng.integers(1, 6, size=2000)
    neg = sample_negatives(positives, 4, popularity, rng)
    assert neg.shape == (2000, 4)
    assert np.all(neg != positives[:, None])
    assert set(np.unique(neg[positives == 1]).tolist()) == {3, 4}
    assert set(np.unique(neg).tolist()) == {1, 3, 4}
    # One item holds all the popularity: negatives fall back to the other items.
    neg = sample_negatives(np.full(50, 2), 3, np.array([0, 0, 9, 0]), rng)
    assert np.all(neg != 2) and neg.min() >= 1 and neg.max() <= 3
    with pytest.raises(ValueError, match="at least 2 items"):
        sample_negatives(np.ones(3, np.int64), 2, np.array([0, 5]), rng)


def test_deterministic_under_the_seed(events_only):
    cfg = dataclasses.replace(CFG, epochs=2, max_examples=400)
    runs = [train_ranker(events_only, cfg) for _ in range(2)]
    (m1, c1, r1), (m2, c2, r2) = runs
    r1.pop("train_seconds"), r2.pop("train_seconds")
    assert r1 == r2
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert np.array_equal(c1.x, c2.x) and np.array_equal(c1.y, c2.y)
    other = train_ranker(events_only, dataclasses.replace(cfg, seed=1))[2]
    other.pop("train_seconds")
    assert other != r1


def test_more_behaviour_codes_than_the_default_vocabulary(events_only):
    """A MovieLens-like vocabulary of five ratings: codes 1..5, six embedding rows."""
    meta = dataclasses.replace(events_only.meta, events=tuple(f"rating_{i}" for i in range(1, 6)),
                               conversion_event="rating_5")
    behaviors = (np.arange(len(events_only.event_item)) % 5 + 1).astype(np.int64)
    data = dataclasses.replace(events_only, meta=meta, event_behavior=behaviors)
    assert data.num_behaviors == 6
    assert build_ranker(data).behavior_emb.num_embeddings == 6
    model, _, metrics = train_ranker(data, dataclasses.replace(CFG, epochs=1, max_examples=600))
    assert model.cfg.num_behaviors == 6 and metrics["epochs_run"] == 1


def test_events_need_a_negative(events_only):
    with pytest.raises(ValueError, match="negatives"):
        train_ranker(events_only, dataclasses.replace(CFG, negatives=0))


def test_labels_setting_chooses_the_source(with_impressions, events_only):
    """ranker.labels=events learns next-interaction intent even where impressions exist; impressions are
    required when asked for; an unknown value is refused."""
    cfg = dataclasses.replace(CFG, epochs=1, max_examples=600)
    _, _, metrics = train_ranker(with_impressions, dataclasses.replace(cfg, labels="events"))
    assert metrics["source"] == "events" and "next interaction" in metrics["label"]
    with pytest.raises(ValueError, match="no impressions"):
        train_ranker(events_only, dataclasses.replace(cfg, labels="impressions"))
    with pytest.raises(ValueError, match="not one of auto, impressions, events"):
        train_ranker(with_impressions, dataclasses.replace(cfg, labels="clicks"))


def test_the_attention_window_applies_only_to_longer_histories(events_only):
    """RankerTrainConfig.attention_window: a build whose histories fit in it keeps the whole-history attention
    (the same model as without the setting)."""
    assert build_ranker(events_only, 32, 64).cfg.attention_window == 0
    assert build_ranker(events_only, 64, 64).cfg.attention_window == 0
    assert build_ranker(events_only, 256, 64).cfg.attention_window == 64
