"""Training of the three stages on the simulator: GRACE retriever, ranker, isotonic calibration."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.simulator import World
from models.beam_search import constrained_beam_search
from models.calibration import IsotonicCalibrator, ctr_metrics
from models.grace import GraceConfig, GraceModel
from models.ranker import Ranker, RankerConfig
from models.tokenizer import PAD, TOKENS_PER_EVENT, ItemTokenizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    max_history: int = 32
    grace_examples: int = 24_000  # a random subset per run keeps the default build within minutes on 2 CPUs
    grace_epochs: int = 1
    grace_batch: int = 128
    grace_lr: float = 2e-3
    ranker_epochs: int = 8
    ranker_batch: int = 256
    ranker_lr: float = 3e-3
    eval_users: int = 300
    beam_width: int = 20


def user_bounds(world: World) -> np.ndarray:
    return np.searchsorted(world.event_user, np.arange(world.config.num_users + 1))


def left_pad_tokens(tokenizer: ItemTokenizer, items_list, behs_list) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [tokenizer.event_tokens(i, b) for i, b in zip(items_list, behs_list)]
    t = max(len(s) for s in seqs)
    tokens = np.full((len(seqs), t), PAD, np.int64)
    for r, s in enumerate(seqs):
        tokens[r, t - len(s):] = s
    tokens_t = torch.from_numpy(tokens)
    return tokens_t, (tokens_t != PAD).float()


def grace_examples(world: World, max_history: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(start, target) event index pairs: train on every next event but each user's last; test on the last."""
    train, test = [], []
    bounds = user_bounds(world)
    for u in range(world.config.num_users):
        lo, hi = int(bounds[u]), int(bounds[u + 1])
        for t in range(lo + 1, hi):
            (test if t == hi - 1 else train).append((max(lo, t - max_history), t))
    return train, test


def train_grace(world: World, tokenizer: ItemTokenizer, cfg: TrainConfig) -> tuple[GraceModel, dict]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = GraceModel(GraceConfig(vocab_size=tokenizer.vocab_size, max_tokens=cfg.max_history * TOKENS_PER_EVENT))
    train, test = grace_examples(world, cfg.max_history)
    train = [train[i] for i in rng.permutation(len(train))[:cfg.grace_examples]]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.grace_lr, weight_decay=0.01)
    steps = cfg.grace_epochs * (len(train) // cfg.grace_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.grace_lr, total_steps=steps, pct_start=0.1)
    lengths = np.array([t - s for s, t in train])
    started = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="grace", mininterval=5)
    for _ in range(cfg.grace_epochs):
        # Batches of similar history length waste little compute on padding.
        order = np.argsort(lengths + rng.random(len(lengths)) * 8)
        batches = [order[i:i + cfg.grace_batch] for i in range(0, len(order) - cfg.grace_batch + 1, cfg.grace_batch)]
        for idx in rng.permutation(len(batches)):
            ex = [train[j] for j in batches[idx]]
            tokens, valid = left_pad_tokens(tokenizer, [world.event_item[s:t] for s, t in ex],
                                            [world.event_behavior[s:t] for s, t in ex])
            target = torch.from_numpy(tokenizer.item_paths[world.event_item[[t for _, t in ex]]])
            logits = model(tokens, valid, target)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    metrics = {"train_examples": len(train), "train_seconds": round(time.perf_counter() - started, 1),
               "final_loss": round(float(loss.item()), 4)}
    metrics.update(evaluate_grace(model, tokenizer, world, test[:cfg.eval_users], cfg.beam_width))
    return model, metrics


@torch.no_grad()
def grace_retrieve(model: GraceModel, tokenizer: ItemTokenizer, trie, path_to_item, enc_tokens: np.ndarray,
                   beam_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference retrieval with the torch model for one request's encoder tokens."""
    tokens = torch.from_numpy(enc_tokens[None])
    valid = torch.ones_like(tokens, dtype=torch.float32)
    cross_kv = model.cross_kv(model.encode(tokens, valid))

    def step(prefix: np.ndarray) -> np.ndarray:
        return model.decode_step(torch.from_numpy(prefix), cross_kv, valid).numpy()

    return constrained_beam_search(step, trie, path_to_item, beam_width)


def evaluate_grace(model, tokenizer, world, examples, beam_width) -> dict:
    """Leave-last-out HR@10 / NDCG@10 with constrained beam search over the whole catalog."""
    trie, p2i = tokenizer.build_trie(), tokenizer.path_to_item()
    hits, ndcg = [], []
    for s, t in examples:
        enc = tokenizer.event_tokens(world.event_item[s:t], world.event_behavior[s:t])
        items, _ = grace_retrieve(model, tokenizer, trie, p2i, enc, beam_width)
        rank = np.flatnonzero(items[:10] == world.event_item[t])
        hits.append(len(rank) > 0)
        ndcg.append(1.0 / np.log2(rank[0] + 2) if len(rank) else 0.0)
    return {"eval_users": len(examples), "hr@10": round(float(np.mean(hits)), 4),
            "ndcg@10": round(float(np.mean(ndcg)), 4)}


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


def train_ranker(world: World, cfg: TrainConfig) -> tuple[Ranker, IsotonicCalibrator, dict]:
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
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.ranker_lr, weight_decay=1e-4)
    started = time.perf_counter()
    model.train()
    for _ in tqdm(range(cfg.ranker_epochs), desc="ranker", mininterval=5):
        perm = rng.permutation(train_idx)
        for i in range(0, len(perm), cfg.ranker_batch):
            b = torch.from_numpy(perm[i:i + cfg.ranker_batch])
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
