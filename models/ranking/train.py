"""Training of the ranking stages on the simulator: ranker and isotonic calibration. (GRACE trains in
models/grace/recommender.py, shared with the evaluation harness.)"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.simulator import World
from serving.contract import default_limit
from serving.calibration import IsotonicCalibrator, ctr_metrics
from models.ranking.model import Ranker, RankerConfig


@dataclasses.dataclass(frozen=True)
class RankerTrainConfig:
    seed: int = 0
    max_history: int = default_limit("max_history")
    epochs: int = 8
    batch_size: int = 256
    lr: float = 3e-3


def user_bounds(world: World) -> np.ndarray:
    return np.searchsorted(world.event_user, np.arange(world.config.num_users + 1))


def ranker_histories(world: World, users: np.ndarray, times: np.ndarray, max_history: int):
    """Right-aligned [n, max_history] item and behaviour histories strictly before each time."""
    bounds = user_bounds(world)
    items = np.zeros((len(users), max_history), np.int64)
    behs = np.zeros((len(users), max_history), np.int64)
    for r, (u, t) in enumerate(zip(users, times)):
        lo, hi = int(bounds[u]), int(bounds[u + 1])
        end = lo + int(np.searchsorted(world.event_timestamp[lo:hi], t, side="left"))
        start = max(lo, end - max_history)
        n = end - start
        if n:
            items[r, -n:] = world.event_item[start:end]
            behs[r, -n:] = world.event_behavior[start:end]
    return items, behs


def split_users(num_users: int, seed: int) -> np.ndarray:
    """0 = train (70%), 1 = calibration (15%), 2 = test (15%), per user."""
    u = np.random.default_rng(seed + 1).random(num_users)
    return np.where(u < 0.7, 0, np.where(u < 0.85, 1, 2))


def train_ranker(world: World, cfg: RankerTrainConfig) -> tuple[Ranker, IsotonicCalibrator, dict]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    cat, sim = world.catalog, world.config
    model = Ranker(RankerConfig(num_items=cat.num_items, num_leaf_categories=sim.num_leaf_categories,
                                num_brands=sim.num_brands, num_price_buckets=sim.num_price_buckets),
                   cat.leaf_category, cat.brand, cat.price_bucket)
    hist_items, hist_behs = ranker_histories(world, world.impression_user, world.impression_time, cfg.max_history)
    split = split_users(sim.num_users, cfg.seed)[world.impression_user]
    cand, label = world.impression_item, world.impression_click.astype(np.float32)
    tensors = [torch.from_numpy(a) for a in (hist_items, hist_behs, cand, label)]
    train_idx = np.flatnonzero(split == 0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    started = time.perf_counter()
    model.train()
    for _ in tqdm(range(cfg.epochs), desc="ranker", mininterval=5):
        perm = rng.permutation(train_idx)
        for i in range(0, len(perm), cfg.batch_size):
            b = torch.from_numpy(perm[i:i + cfg.batch_size])
            h, hb, c, y = (t[b] for t in tensors)
            loss = F.binary_cross_entropy_with_logits(model(h, hb, c[:, None])[:, 0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = np.concatenate([model(tensors[0][i:i + 4096], tensors[1][i:i + 4096],
                                       tensors[2][i:i + 4096, None])[:, 0].numpy()
                                 for i in range(0, len(label), 4096)])
    calib, test = split == 1, split == 2
    calibrator = IsotonicCalibrator.fit(logits[calib], label[calib])
    raw = 1.0 / (1.0 + np.exp(-logits[test]))
    metrics = {"train_impressions": int(len(train_idx)), "train_seconds": round(time.perf_counter() - started, 1),
               "test_impressions": int(test.sum()),
               "test_uncalibrated": ctr_metrics(raw, label[test]),
               "test_calibrated": ctr_metrics(calibrator(logits[test]), label[test]),
               "test_true_ctr_auc_ceiling": ctr_metrics(world.impression_true_ctr[test], label[test])["auc"]}
    return model, calibrator, metrics
