"""Ranker: DIN-style target attention over the user's recent events, plus item attributes, with two heads on
one trunk: `ctr` (a click logit, calibrated into the served pCTR; learnt from clicked impressions where the
dataset has them) and `relevance` (how likely the candidate is the user's next interaction, learnt from the
events; it orders the served top-k). Ordering by CTR alone ranks what users click when shown, not what they do
next: on the simulator it put the served top-10 below the recent-items source alone.

Item representations combine an id embedding with attribute embeddings (leaf category, brand, price
bucket) so that rarely clicked items still get sensible scores. The same item vectors serve the
`embedding_knn` retrieval source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import checkpoint


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    num_items: int
    num_leaf_categories: int
    num_brands: int
    num_price_buckets: int
    num_behaviors: int = 5
    d_model: int = 32
    hidden: int = 64
    # The history window the model is trained on (events). The repeat-recency feature counts in its units, so a
    # history sent without its padding columns scores the same (serving sends a batch's real columns only).
    # 0: in units of the input's width (checkpoints from before this field, always fed full windows).
    max_history: int = 0
    # DIN's target attention reads the newest `attention_window` events only (0: the whole history); the mean,
    # newest-event, category-share and repeat features still read all of it. The attention's pair work grows
    # with candidates x events (64 x 256 pairs of MLP at 256-event histories); the window bounds it, at the
    # cost of the oldest events' individual weight (not measured on quality: the simulator's shoppers have ~40
    # events, so no build here trains on histories past the window).
    attention_window: int = 0


class Ranker(nn.Module):
    def __init__(self, cfg: RankerConfig, leaf: np.ndarray, brand: np.ndarray, price_bucket: np.ndarray):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.register_buffer("item_leaf", torch.tensor(leaf, dtype=torch.long))  # copies: never alias
        self.register_buffer("item_brand", torch.tensor(brand, dtype=torch.long))
        self.register_buffer("item_price", torch.tensor(price_bucket, dtype=torch.long))
        self.item_emb = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        self.leaf_emb = nn.Embedding(cfg.num_leaf_categories, d)
        self.brand_emb = nn.Embedding(cfg.num_brands, d)
        self.price_emb = nn.Embedding(cfg.num_price_buckets, d)
        self.behavior_emb = nn.Embedding(cfg.num_behaviors, d, padding_idx=0)
        self.attn_mlp = nn.Sequential(nn.Linear(4 * d, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
        self.trunk = nn.Sequential(nn.Linear(6 * d + 4, cfg.hidden), nn.ReLU(),
                                   nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())
        self.ctr_head, self.relevance_head = nn.Linear(cfg.hidden, 1), nn.Linear(cfg.hidden, 1)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return (self.item_emb(items) + self.leaf_emb(self.item_leaf[items])
                + self.brand_emb(self.item_brand[items]) + self.price_emb(self.item_price[items]))

    def forward(self, hist_items: torch.Tensor, hist_behaviors: torch.Tensor,
                cand_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hist [B,L] right-aligned (newest last, 0 = pad), cand [B,C] -> (ctr logits [B,C], relevance [B,C])."""
        valid = (hist_items > 0).float()  # [B,L]
        hist = self.item_vectors(hist_items) + self.behavior_emb(hist_behaviors)  # [B,L,d]
        cand = self.item_vectors(cand_items)  # [B,C,d]
        b, c, d = cand.shape
        l = hist.shape[1]
        # The newest events (right-aligned): a slice past the front takes them all, in torch and in ONNX alike.
        attended = slice(-self.cfg.attention_window, None) if self.cfg.attention_window else slice(None)
        recent, recent_valid = hist[:, attended], valid[:, attended]
        w = self.target_attention_logits(recent, cand)  # [B,C,L or window]
        w = w.masked_fill(recent_valid[:, None] == 0, -1e9).softmax(-1) * recent_valid[:, None]
        interest = torch.matmul(w, recent)  # [B,C,d]: the attention-weighted (recent) history
        n = valid.sum(1, keepdim=True).clamp(min=1.0)
        mean = (hist * valid[..., None]).sum(1) / n  # [B,d]
        last = hist[:, -1]  # newest event (right-aligned)
        same_leaf = (self.item_leaf[cand_items][:, :, None] == self.item_leaf[hist_items][:, None]).float()
        leaf_share = (same_leaf * valid[:, None]).sum(-1, keepdim=True) / n[:, None]  # [B,C,1]
        # The newest event reveals the current intent: an explicit "same leaf as last event" feature.
        same_as_last = same_leaf[:, :, -1:] * valid[:, None, -1:]
        # Repeat intent, explicitly: how often the candidate itself is in the history, and how recently (1 for
        # the newest event, falling by 1/W per event to 1/W for the oldest of a full window of W = max_history
        # events; 0 when absent).
        seen = (cand_items[:, :, None] == hist_items[:, None]).float() * valid[:, None]  # [B,C,L]
        seen_share = seen.sum(-1, keepdim=True) / n[:, None]
        window = self.cfg.max_history or l
        recency = (torch.arange(l, device=hist_items.device, dtype=seen.dtype) + (window - l + 1)) / window
        seen_recency = (seen * recency).amax(-1, keepdim=True) if l else seen_share
        feats = torch.cat([cand, interest, cand * interest, mean[:, None].expand(b, c, d),
                           cand * last[:, None], last[:, None].expand(b, c, d), leaf_share, same_as_last,
                           seen_share, seen_recency], -1)
        h = self.trunk(feats)
        return self.ctr_head(h).squeeze(-1), self.relevance_head(h).squeeze(-1)

    def target_attention_logits(self, hist: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """DIN's attention MLP over [h, q, h*q, h-q] of every (candidate, history event) pair -> [B,C,L]. Its
        first layer is linear, so the h and q parts (and h-q's) are applied once per event and once per
        candidate and only h*q per pair: a quarter of the pair-wise multiply-adds, the same function."""
        first, rest = self.attn_mlp[0], self.attn_mlp[1:]
        w_h, w_q, w_hq, w_diff = first.weight.split(self.cfg.d_model, dim=1)  # each [hidden, d]
        per_event = torch.matmul(hist, (w_h + w_diff).t())  # [B,L,hidden]
        per_cand = torch.matmul(cand, (w_q - w_diff).t()) + first.bias  # [B,C,hidden]
        pairs = torch.matmul(cand[:, :, None] * hist[:, None], w_hq.t())  # [B,C,L,hidden]
        return rest(pairs + per_event[:, None] + per_cand[:, :, None]).squeeze(-1)


CHECKPOINT_FILE = "ranker.pt"  # torch checkpoint beside the ONNX export; the in-process reference runs it


def save_checkpoint(model: Ranker, directory: Path) -> None:
    checkpoint.save(model, Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(directory: Path) -> Ranker:
    def build(config: dict) -> Ranker:
        cfg = RankerConfig(**config)
        placeholder = np.zeros(cfg.num_items + 1, np.int64)  # the real lookup tables come with the state dict
        return Ranker(cfg, placeholder, placeholder, placeholder)

    return checkpoint.load(Path(directory) / CHECKPOINT_FILE, build)
