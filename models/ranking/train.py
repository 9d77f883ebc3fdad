"""Training of the ranking stages on a dataset (data.build_data.BuildData): ranker and isotonic calibration.
(GRACE trains in models/grace/recommender.py, shared with the evaluation harness.)

The ranker has two heads (models.ranking.model): `relevance` always learns from the events (next interaction
against sampled items, below); `ctr` learns from one of two sources of labels, decided by the dataset:

* with organic impressions (impressions.parquet): one example per impression, its candidate the shown item,
  labelled clicked / not clicked, its history the user's newest events strictly before the impression's time;
* without: one example per event after a user's first, its candidates the event's item (label 1) and
  `negatives` items sampled by popularity, excluding that item (label 0), its history the user's events before
  it (in the dataset's order: (timestamp, file order)). The calibrated score then estimates the probability that
  a candidate is the user's next interaction among one positive and `negatives` sampled items, not a click rate.

Users are split 70/15/15 into train/calibration/test; a slice of the train users is held out for early stopping
on validation log-loss. The isotonic calibrator is fitted on the calibration users, the metrics on the test users.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from data.build_data import BuildData
from serving.contract import default_limit
from serving.calibration import IsotonicCalibrator, ctr_metrics
from models.ranking.model import Ranker, RankerConfig

LABEL_IMPRESSIONS = "clicked organic impression"


def label_from_events(negatives: int) -> str:
    """What the calibrated score means when the ranker learns from events (the build manifest shows it)."""
    return (f"probability that this candidate is the user's next interaction, among one positive and "
            f"{negatives} sampled items (popularity-sampled negatives; learnt from the events)")


@dataclasses.dataclass(frozen=True)
class RankerTrainConfig:
    seed: int = 0
    max_history: int = default_limit("max_history")
    epochs: int = 8  # at most; early stopping usually ends sooner
    patience: int = 2  # epochs without a better validation log-loss before stopping
    validation_fraction: float = 0.1  # of the train users, held out for early stopping
    batch_size: int = 256
    lr: float = 3e-3
    # Without impressions: popularity-sampled negatives per positive event.
    negatives: int = 4
    # Examples (impressions, or positive events with their negatives) kept, sampled with the seed: bounds the
    # training time whatever the dataset's size.
    max_examples: int = 40_000
    # "auto": impressions when the dataset has them, else events; "events": the events even when it has them
    # (the ranker then learns next-interaction intent, repeats included, instead of organic click-through).
    labels: str = "auto"
    # RankerConfig.attention_window: DIN's attention over the newest 64 events. Below 64-event histories (the
    # default build's 32) it changes nothing; at 256 it cuts the ranker's pair work 4x.
    attention_window: int = 64


SPLIT_TRAIN, SPLIT_CALIB, SPLIT_TEST, SPLIT_VALID = 0, 1, 2, 3


def split_users(num_users: int, seed: int, validation_fraction: float = 0.0) -> np.ndarray:
    """Per user: 0 = train (70%), 1 = calibration (15%), 2 = test (15%); with validation_fraction > 0, that
    share of the train users becomes 3 = validation (early stopping)."""
    u = np.random.default_rng(seed + 1).random(num_users)
    split = np.where(u < 0.7, SPLIT_TRAIN, np.where(u < 0.85, SPLIT_CALIB, SPLIT_TEST))
    v = np.random.default_rng(seed + 2).random(num_users)
    return np.where((split == SPLIT_TRAIN) & (v < validation_fraction), SPLIT_VALID, split)


@dataclasses.dataclass
class Examples:
    """Ranker training examples: one history, C candidates and their 0/1 labels per row."""

    user: np.ndarray  # int64 [n]
    hist_items: np.ndarray  # int64 [n, L] right-aligned, 0 = padding
    hist_behaviors: np.ndarray  # int64 [n, L]
    candidates: np.ndarray  # int64 [n, C]
    labels: np.ndarray  # float32 [n, C]

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, rows: np.ndarray) -> "Examples":
        return Examples(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})


def _cap(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of at most `cap` of n rows, sampled with `rng`, in their original order."""
    if n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))


def impression_examples(data: BuildData, cfg: RankerTrainConfig, rng: np.random.Generator) -> Examples:
    rows = _cap(len(data.impression_user), cfg.max_examples, rng)
    users, times = data.impression_user[rows], data.impression_time[rows]
    items, behs, _ = data.histories_before(users, times, cfg.max_history)
    return Examples(user=users.astype(np.int64), hist_items=items, hist_behaviors=behs,
                    candidates=data.impression_item[rows].astype(np.int64)[:, None],
                    labels=data.impression_click[rows].astype(np.float32)[:, None])


def sample_negatives(positives: np.ndarray, count: int, popularity: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """[n, count] items drawn by popularity (weights over internal ids 1..N), none equal to its row's positive."""
    n_items = len(popularity) - 1
    if n_items < 2:
        raise ValueError(f"catalog: negatives need at least 2 items, got {n_items}")
    weights = popularity[1:].astype(np.float64)
    if (weights > 0).sum() < 2:  # one popular item could never be its own negative: sample uniformly
        weights = np.ones(n_items)
    p = weights / weights.sum()
    out = rng.choice(n_items, size=(len(positives), count), p=p) + 1
    for _ in range(50):  # resample collisions with the positive
        clash = out == positives[:, None]
        if not clash.any():
            return out
        out[clash] = rng.choice(n_items, size=int(clash.sum()), p=p) + 1
    # Still clashing (a positive that holds nearly all the popularity): any other item, uniformly.
    r, c = np.nonzero(out == positives[:, None])
    shift = rng.integers(1, n_items, size=len(r))
    out[r, c] = (positives[r] - 1 + shift) % n_items + 1
    return out


def event_examples(data: BuildData, cfg: RankerTrainConfig, rng: np.random.Generator) -> Examples:
    """Every event after its user's first is a positive; its history is the user's events before it."""
    if cfg.negatives < 1:
        raise ValueError(f"ranker.negatives: training from events needs at least 1 negative, got {cfg.negatives}")
    user = data.event_user
    follows = np.flatnonzero(user[1:] == user[:-1]) + 1  # rows with an earlier event of the same user
    rows = follows[_cap(len(follows), cfg.max_examples, rng)]
    first = data.user_bounds()[user[rows]]
    length = cfg.max_history
    offsets = rows[:, None] - length + np.arange(length)[None, :]  # right-aligned: the newest event last
    valid = offsets >= first[:, None]
    idx = np.where(valid, offsets, 0)
    positives = data.event_item[rows].astype(np.int64)
    negatives = sample_negatives(positives, cfg.negatives, data.item_popularity(), rng)
    labels = np.zeros((len(rows), 1 + cfg.negatives), np.float32)
    labels[:, 0] = 1.0
    return Examples(user=user[rows].astype(np.int64),
                    hist_items=np.where(valid, data.event_item[idx], 0).astype(np.int64),
                    hist_behaviors=np.where(valid, data.event_behavior[idx], 0).astype(np.int64),
                    candidates=np.concatenate([positives[:, None], negatives], 1), labels=labels)


def build_ranker(data: BuildData, max_history: int = default_limit("max_history"), attention_window: int = 0
                 ) -> Ranker:
    """An untrained ranker sized by the dataset's catalog and behaviour vocabulary, for windows of max_history
    (target attention over the newest attention_window events; 0: all)."""
    cat = data.catalog
    cfg = RankerConfig(num_items=cat.num_items, num_leaf_categories=max(1, cat.num_leaf_categories),
                       num_brands=max(1, cat.num_brands), num_price_buckets=max(1, cat.num_price_buckets),
                       num_behaviors=data.num_behaviors, max_history=max_history,
                       attention_window=attention_window if 0 < attention_window < max_history else 0)
    return Ranker(cfg, cat.leaf_category, cat.brand, cat.price_bucket)


def predict_logits(model: Ranker, ex: Examples, batch: int = 4096, head: int = 0) -> np.ndarray:
    """float32 [n, C] logits of one head (0 = ctr, 1 = relevance; eval mode, no gradients)."""
    model.eval()
    out = [np.zeros((0, ex.candidates.shape[1]), np.float32)]
    with torch.no_grad():
        for i in range(0, len(ex), batch):
            sl = slice(i, i + batch)
            out.append(model(torch.from_numpy(ex.hist_items[sl]), torch.from_numpy(ex.hist_behaviors[sl]),
                             torch.from_numpy(ex.candidates[sl]))[head].numpy())
    return np.concatenate(out)


def _log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)))


def _metrics(probs: np.ndarray, labels: np.ndarray) -> dict | None:
    """ctr_metrics, or None where the labels hold one class only (AUC and log-loss are undefined)."""
    if len(np.unique(labels)) < 2:
        return None
    return {k: round(v, 4) for k, v in ctr_metrics(probs, labels).items()}


def train_ranker(data: BuildData, cfg: RankerTrainConfig) -> tuple[Ranker, IsotonicCalibrator, dict]:
    """Train the ranker on `data` (impressions when the dataset has them, else its events), fit the isotonic
    calibrator on the calibration users and report metrics on the test users. Deterministic under cfg.seed."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.labels not in ("auto", "impressions", "events"):
        raise ValueError(f"ranker.labels: {cfg.labels!r} is not one of auto, impressions, events")
    has_impressions = data.impression_user is not None and len(data.impression_user) > 0
    if cfg.labels == "impressions" and not has_impressions:
        raise ValueError(f"ranker.labels=impressions: {data.name} has no impressions.parquet")
    from_impressions = has_impressions and cfg.labels != "events"
    ex = impression_examples(data, cfg, rng) if from_impressions else event_examples(data, cfg, rng)
    user_split = split_users(data.num_users, cfg.seed, cfg.validation_fraction)
    split = user_split[ex.user]
    train, valid, calib, test = (ex.subset(np.flatnonzero(split == s))
                                 for s in (SPLIT_TRAIN, SPLIT_VALID, SPLIT_CALIB, SPLIT_TEST))
    if len(train) == 0:
        raise ValueError(f"{data.name}: no ranker training examples ({len(ex)} examples in all)")
    if len(calib) == 0:
        raise ValueError(f"{data.name}: no calibration examples: too few users ({data.num_users})")
    # The relevance head learns the next interaction from the events, on the same users' split.
    if from_impressions:
        events = event_examples(data, cfg, rng)
        event_split = user_split[events.user]
        rel_train, rel_valid, rel_test = (events.subset(np.flatnonzero(event_split == s))
                                          for s in (SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST))
    else:
        rel_train, rel_valid, rel_test = train, valid, test

    model = build_ranker(data, cfg.max_history, cfg.attention_window)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    tensors = [torch.from_numpy(a) for a in (train.hist_items, train.hist_behaviors, train.candidates, train.labels)]
    rel_tensors = [torch.from_numpy(a) for a in (rel_train.hist_items, rel_train.hist_behaviors, rel_train.candidates,
                                                 rel_train.labels)]
    history, best_loss, best_epoch, best_state, stale = [], float("inf"), 0, None, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = rng.permutation(len(train))
        rel_perm = rng.permutation(len(rel_train))
        steps = -(-len(perm) // cfg.batch_size)
        rel_batch = max(1, -(-len(rel_perm) // steps))  # one pass over each example set per epoch
        for step, i in enumerate(range(0, len(perm), cfg.batch_size)):
            b = torch.from_numpy(perm[i:i + cfg.batch_size])
            h, hb, c, y = (t[b] for t in tensors)
            ctr, relevance = model(h, hb, c)
            loss = F.binary_cross_entropy_with_logits(ctr, y)
            if from_impressions:
                rb = torch.from_numpy(rel_perm[step * rel_batch:(step + 1) * rel_batch])
                if len(rb):
                    rh, rhb, rc, ry = (t[rb] for t in rel_tensors)
                    loss = loss + F.binary_cross_entropy_with_logits(model(rh, rhb, rc)[1], ry)
            else:
                loss = loss + F.binary_cross_entropy_with_logits(relevance, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if len(valid) == 0:  # too few users for a validation slice: the full budget, the last epoch kept
            best_epoch = epoch
            continue
        val_loss = _log_loss(predict_logits(model, valid), valid.labels)
        if len(rel_valid):
            val_loss += _log_loss(predict_logits(model, rel_valid, head=1), rel_valid.labels)
        history.append(round(val_loss, 5))
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    train_seconds = time.perf_counter() - started

    calib_logits = predict_logits(model, calib).ravel()
    calibrator = IsotonicCalibrator.fit(calib_logits, calib.labels.ravel())
    test_logits, test_labels = predict_logits(model, test), test.labels
    raw = 1.0 / (1.0 + np.exp(-test_logits.ravel().astype(np.float64)))
    metrics = {
        "label": LABEL_IMPRESSIONS if from_impressions else label_from_events(cfg.negatives),
        "source": "impressions" if from_impressions else "events",
        "candidates_per_example": int(ex.candidates.shape[1]),
        "examples": {"train": len(train), "validation": len(valid), "calibration": len(calib), "test": len(test)},
        "epochs_run": len(history) if len(valid) else cfg.epochs,
        "best_epoch": best_epoch,
        "best_validation_log_loss": round(best_loss, 5) if best_state is not None else None,
        "validation_log_loss_per_epoch": history,  # ctr + relevance heads
        "train_seconds": round(train_seconds, 1),
        "test_uncalibrated": _metrics(raw, test_labels.ravel()),
        "test_calibrated": _metrics(calibrator(test_logits.ravel()), test_labels.ravel()),
    }
    if not from_impressions and len(test):
        # How often the positive outscores all its sampled negatives (chance: 1 / candidates).
        metrics["test_positive_ranked_first"] = round(float((test_logits.argmax(1) == 0).mean()), 4)
    if len(rel_test):
        rel_logits = predict_logits(model, rel_test, head=1)
        metrics["relevance"] = {"source": "events", "examples": {"train": len(rel_train), "test": len(rel_test)},
                                "test_positive_ranked_first": round(float((rel_logits.argmax(1) == 0).mean()), 4),
                                "chance": round(1.0 / rel_test.candidates.shape[1], 4)}
    return model, calibrator, metrics
