"""GRACE-shaped generative retriever: an encoder over the CoT token history, a decoder that writes the next
item's token path. Dense attention here; the journey-aware sparse attention replaces `Attention` later.

Positions count back from the most recent token (histories are left-padded), so a request's newest event
always has position 0 whatever its length.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from models.tokenizer import BOS, PATH_LENGTH, TOKENS_PER_EVENT

NEG_INF = -1e9  # finite, so fully masked rows stay NaN-free in every backend


@dataclasses.dataclass(frozen=True)
class GraceConfig:
    vocab_size: int
    max_tokens: int
    d_model: int = 64
    num_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.1


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.dropout = dropout

    def project_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kv [B,Tk,d] -> keys, values [B,H,Tk,hd]."""
        b, tk, _ = kv.shape
        k = self.k(kv).view(b, tk, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(kv).view(b, tk, self.heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, kv: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                bias: torch.Tensor) -> torch.Tensor:
        """x [B,Tq,d]; kv [B,Tk,d] or projected (keys, values) whose batch may be 1 (broadcast over
        beams); bias additive [B|1,1,Tq|1,Tk]."""
        b, tq, d = x.shape
        q = self.q(x).view(b, tq, self.heads, self.head_dim).transpose(1, 2)
        k, v = kv if isinstance(kv, tuple) else self.project_kv(kv)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o(out.transpose(1, 2).reshape(b, tq, d))


class Block(nn.Module):
    def __init__(self, cfg: GraceConfig, cross: bool):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.attn = nn.LayerNorm(d), Attention(d, cfg.num_heads, cfg.dropout)
        self.cross = Attention(d, cfg.num_heads, cfg.dropout) if cross else None
        self.norm_cross = nn.LayerNorm(d) if cross else None
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Linear(cfg.ff_mult * d, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, self_bias, memory=None, memory_bias=None):
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, self_bias))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), memory, memory_bias))
        return x + self.drop(self.ff(self.norm2(x)))


class GraceModel(nn.Module):
    def __init__(self, cfg: GraceConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.token_emb = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
        self.enc_pos = nn.Embedding(cfg.max_tokens, d)
        self.slot_emb = nn.Embedding(TOKENS_PER_EVENT, d)  # which slot of the event (behaviour, level...)
        self.dec_pos = nn.Embedding(PATH_LENGTH, d)
        self.encoder = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size)

    def encode(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """tokens [B,T] left-padded with whole events, valid [B,T] float (1 real, 0 pad) -> memory [B,T,d]."""
        t = tokens.shape[1]
        idx = torch.arange(t, device=tokens.device)
        from_end = (t - 1) - idx
        slot = (TOKENS_PER_EVENT - 1) - from_end % TOKENS_PER_EVENT
        x = self.token_emb(tokens) + self.enc_pos(from_end) + self.slot_emb(slot)
        bias = ((1.0 - valid) * NEG_INF)[:, None, None, :]
        for block in self.encoder:
            x = block(x, bias)
        return self.enc_norm(x)

    def cross_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """Cross-attention keys/values of every decoder layer, computed once per request and reused by
        every beam and step: [layers, 2, B, H, T, hd]."""
        return torch.stack([torch.stack(block.cross.project_kv(memory)) for block in self.decoder])

    def decode(self, prefix: torch.Tensor, cross_kv: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        """prefix [B,S] (starts with BOS) -> logits [B,S,V] for the next token at each position.
        cross_kv and memory_valid may have batch 1 and are then shared by all B prefixes (beams)."""
        s = prefix.shape[1]
        x = self.token_emb(prefix) + self.dec_pos(torch.arange(s, device=prefix.device))
        causal = torch.triu(torch.full((s, s), NEG_INF, device=prefix.device), diagonal=1)[None, None]
        memory_bias = ((1.0 - memory_valid) * NEG_INF)[:, None, None, :]
        for layer, block in enumerate(self.decoder):
            x = block(x, causal, (cross_kv[layer, 0], cross_kv[layer, 1]), memory_bias)
        return self.head(self.dec_norm(x))

    def decode_step(self, prefix: torch.Tensor, cross_kv: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the token after `prefix` [B,S] -> [B,V] (the exported beam-search step)."""
        return self.decode(prefix, cross_kv, memory_valid)[:, -1].log_softmax(-1)

    def forward(self, tokens, valid, target_paths):
        """Teacher forcing: logits [B, PATH_LENGTH, V] for the target item path."""
        memory = self.encode(tokens, valid)
        bos = torch.full_like(target_paths[:, :1], BOS)
        prefix = torch.cat([bos, target_paths[:, :-1]], dim=1)
        return self.decode(prefix, self.cross_kv(memory), valid)
