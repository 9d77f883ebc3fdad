"""SASRec (Kang & McAuley 2018): ID-based causal self-attention over a user's item sequence, next-item scores
by dot product with the (tied) item embeddings. The evaluation's baseline (evaluation.baselines trains it) and a
served retrieval source (sasrec_retrieve serves its ONNX export, exporters.onnx_export)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models import checkpoint

CHECKPOINT_FILE = "sasrec.pt"  # the torch model beside its ONNX export (the in-process reference runs it)


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x [B,T,d] -> [B,T,d]; with last_only, the state of the newest position only [B,1,d] (its query
        against every key: what a final block owes a next-item score, 1/T of the queries)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if last_only:
            q, mask, x = q[:, :, -1:], mask[:, :, -1:], x[:, -1:]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, q.shape[2], d)))
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

    def states(self, items: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """items [B,T] right-aligned (0 = padding on the left) -> causal state after every event [B,T,d]
        (with last_only, after the newest event only: [B,1,d], the final block's other queries skipped)."""
        t = items.shape[1]
        real = items != 0
        # Positions from the first real event: a state never depends on later events, so the state after
        # every event of a window is what a history ending there gets (one loss per position is exact).
        position = (real.long().cumsum(dim=1) - 1).clamp(min=0)
        x = self.item_emb(items) * self.cfg.d_model ** 0.5 + self.pos_emb(position)
        x = self.drop(x)
        causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
        # Keys must be real events; a padding query sees itself only, so no row is fully masked (no NaN).
        steps = torch.arange(t, device=items.device)
        mask = (causal[None] & real[:, None, :]) | (steps[:, None] == steps[None, :])[None]  # (ONNX: no bool EyeLike)
        mask = mask[:, None]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and i == len(self.blocks) - 1)
        return self.norm(x)

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """States [..., d] -> logits over real items [..., N] (column j is item j + 1), tied embeddings."""
        return states @ self.item_emb.weight[1:].T

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Next-item logits after the newest event [B, N]."""
        return self.scores(self.states(items, last_only=True)[:, -1])


def save_checkpoint(model: SASRecModel, directory: Path) -> None:
    checkpoint.save(model, Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(directory: Path) -> SASRecModel:
    return checkpoint.load(Path(directory) / CHECKPOINT_FILE, lambda cfg: SASRecModel(SASRecConfig(**cfg)))
