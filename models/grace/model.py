"""GRACE generative retriever: an encoder over the chain-of-thought token history, a decoder that writes the
next item's token path, with journey-aware sparse attention (JSA) or dense attention in the encoder.

Every embedding of a history token depends only on the tokens before it (positions count from the first real
token of the history, journeys from its first journey; histories are left-padded with whole events), so with
the causal encoder the memory of a history's prefix is the prefix of its memory. That is what lets training
supervise every position (forward_positions): one encoder pass over a history, and the decoder writes the
next item after every event, its cross-attention masked to the events up to it; exactly what serving computes
for that prefix alone. Every token also carries its journey: its journey index and its position inside the
journey. The decoder keeps a KV cache of its own self-attention, so a beam search step feeds one token per
beam instead of the whole prefix. With `level_offsets`, the token at path position p is normalised over level
p's tokens only (the only ones the trie can allow there), in training and in decoding alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models import checkpoint
from serving.grace.tokenizer import BOS, event_paths

NEG_INF = -1e9  # finite, so fully masked rows stay NaN-free in every backend


@dataclasses.dataclass(frozen=True)
class GraceConfig:
    vocab_size: int
    max_tokens: int
    path_length: int = 5
    tokens_per_event: int = 6
    d_model: int = 64
    num_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.1  # residual and feed-forward dropout
    # Dropout on attention probabilities forces SDPA's unfused path and cost ~29% of a CPU step with no gain
    # in HR@10 (issue 12's measurement); off by default.
    attention_dropout: float = 0.0
    level_offsets: tuple[int, ...] | None = None  # ItemTokenizer.level_offsets: level p owns [off[p], off[p+1])
    attention: str = "dense"  # "dense" (SDPA) or "jsa" (journey-aware sparse attention)
    causal_encoder: bool = True  # JSA is causal by construction; GRACE-dense matches it, TIGER does not
    use_journeys: bool = True  # journey embeddings (distance in journeys, position inside the journey)
    jsa: dict | None = None  # JSAConfig fields when attention == "jsa"
    jsa_backend: str = "gather"
    # The encoder attends over events instead of tokens: each event's token embeddings (with their positions,
    # slots and journeys) are summed into one vector, so a history of E events is E positions, not
    # E * tokens_per_event, in the encoder and in the decoder's cross-attention. Same inputs and outputs.
    event_memory: bool = False
    # A copy path (pointer-generator): the next token's distribution mixes the generated one with a copy of the
    # same level's token of the history events the decoder points at, a learned gate between them. It lets
    # GRACE recommend an item the user already had, as recency and SASRec (tied item embeddings) can; for a
    # dataset whose users repeat items. Needs event_memory (one memory position per event to point at); the
    # decoder step then takes the history's item paths (memory_paths) as an input.
    copy: bool = False
    # The output head shares the token embeddings (its weight is token_emb's; a bias of its own), as SASRec
    # ties its item embeddings: a token read in the history and the same token written share one vector.
    tied_head: bool = False
    # A dense item head beside the generative decoder (as LIGER and COBRA pair semantic IDs with dense
    # retrieval): the encoder's state after an event, projected, scores every catalog item by a dot product with
    # the item's vector, the scaled sum of its path tokens' embeddings (the decoder's vocabulary: no per-item
    # parameters, and an item new to the catalog has a vector as soon as it has a path). The catalog size;
    # 0: no item head. The paths are a buffer (GraceModel.set_item_paths), saved with the weights.
    item_head: int = 0
    # Per-item parameters in the event memory: every event also adds an embedding looked up by a hash of its
    # item path (the path is the item: with unique semantic IDs no two items share one), as SASRec's item
    # embeddings give each item a vector of its own; the path tokens alone share every vector between the items
    # of a code. The number of hash buckets (GraceTrainConfig sizes it from the catalog); 0: off. Needs
    # event_memory. The hash is computed from the tokens in the graph, so the encoder's inputs do not change,
    # and an item new to the catalog lands in some bucket (a shared vector) until the model is retrained.
    item_buckets: int = 0

    @property
    def max_events(self) -> int:
        """Events (hence journeys) an encoder input of max_tokens tokens holds at most."""
        return max(1, self.max_tokens // self.tokens_per_event)

    def __post_init__(self):
        if self.attention not in ("dense", "jsa"):
            raise ValueError(f"attention must be 'dense' or 'jsa', got {self.attention!r}")
        if self.attention == "jsa" and not self.causal_encoder:
            raise ValueError("attention='jsa' is causal; causal_encoder must be True")
        if self.copy and not self.event_memory:
            raise ValueError("copy points at history events: it needs event_memory=True")
        if self.item_buckets and not self.event_memory:
            raise ValueError("item_buckets adds a vector per event: it needs event_memory=True")
        if self.level_offsets is not None:
            off = tuple(int(o) for o in self.level_offsets)
            object.__setattr__(self, "level_offsets", off)
            if len(off) != self.path_length + 1 or off[-1] > self.vocab_size or any(b <= a for a, b in zip(off, off[1:])):
                raise ValueError(f"level_offsets must be {self.path_length + 1} increasing token offsets <= "
                                 f"vocab_size {self.vocab_size}, got {off}")


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.dropout = dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kv [B,Tk,d] -> keys, values [B,H,Tk,hd]."""
        return self.split(self.k(kv)), self.split(self.v(kv))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, tq, d = x.shape
        out = F.scaled_dot_product_attention(self.split(self.q(x)), k, v, attn_mask=bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o(out.transpose(1, 2).reshape(b, tq, d))

    def forward(self, x: torch.Tensor, kv: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                bias: torch.Tensor | None) -> torch.Tensor:
        """x [B,Tq,d]; kv [B,Tk,d] or projected (keys, values) whose batch may be 1 (broadcast over
        beams); bias additive [B|1,1,Tq|1,Tk]."""
        k, v = kv if isinstance(kv, tuple) else self.project_kv(kv)
        return self.attend(x, k, v, bias)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: GraceConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        if cfg.attention == "jsa":
            from models.grace.jsa import JSAConfig, JourneySparseAttention  # noqa: PLC0415 (optional dependency)
            # Its longest input is the memory of max_tokens; when that fits one block JSA runs (and exports) two branches.
            memory = cfg.max_events if cfg.event_memory else cfg.max_tokens
            self.attn = JourneySparseAttention(d, cfg.num_heads, JSAConfig(**(cfg.jsa or {})), backend=cfg.jsa_backend,
                                               max_length=memory)
        else:
            self.attn = Attention(d, cfg.num_heads, cfg.attention_dropout)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Linear(cfg.ff_mult * d, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.sparse = cfg.attention == "jsa"

    def forward(self, x, bias, journey_ids, valid):
        h = self.norm1(x)
        a = self.attn(h, journey_ids, valid) if self.sparse else self.attn(h, h, bias)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: GraceConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm_cross, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, cfg.num_heads, cfg.attention_dropout)
        self.cross = Attention(d, cfg.num_heads, cfg.attention_dropout)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Linear(cfg.ff_mult * d, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, past: tuple[torch.Tensor, torch.Tensor] | None, self_bias, cross_kv, memory_bias):
        """Returns (x, (keys, values) of self-attention including x's tokens) for the KV cache."""
        h = self.norm1(x)
        k, v = self.attn.project_kv(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.drop(self.attn.attend(h, k, v, self_bias))
        x = x + self.drop(self.grouped_cross(self.norm_cross(x), cross_kv, memory_bias))
        return x + self.drop(self.ff(self.norm2(x))), (k, v)

    def grouped_cross(self, x, cross_kv, memory_bias):
        """Cross-attention where the R memories of cross_kv [R,H,T,hd] each serve B/R consecutive rows of x
        [B,Tq,d] (R = B: one memory per row; R = 1: every beam of one request; else R requests' beam groups).
        Cross-attention has no interaction between queries, so a memory's rows become one longer query
        sequence: no copy of the memory per beam. memory_bias [R,1,1,T]."""
        b, tq, d = x.shape
        r = cross_kv[0].shape[0]
        return self.cross(x.reshape(r, -1, d), cross_kv, memory_bias).reshape(b, tq, d)

    def forward_groups(self, x, group: int, self_bias, cross_kv, memory_bias):
        """Training: x [B, G*group, d] holds G independent decoder sequences of `group` tokens per row (one
        per supervised event); self-attention stays inside each sequence (a reshape, no block mask), cross-
        attention sees the row's memory through memory_bias [B,1,G*group,T]."""
        b, n, d = x.shape
        h = self.norm1(x).reshape(b * (n // group), group, d)
        k, v = self.attn.project_kv(h)
        x = x + self.drop(self.attn.attend(h, k, v, self_bias).reshape(b, n, d))
        x = x + self.drop(self.cross(self.norm_cross(x), cross_kv, memory_bias))
        return x + self.drop(self.ff(self.norm2(x)))


class GraceModel(nn.Module):
    def __init__(self, cfg: GraceConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.token_emb = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
        self.enc_pos = nn.Embedding(cfg.max_tokens, d)
        self.slot_emb = nn.Embedding(cfg.tokens_per_event, d)  # which slot of the event (behaviour, level...)
        if cfg.use_journeys:
            # Sized by the input limits, so no value is clamped: a history of max_tokens tokens holds at most
            # max_events journeys (indices 0..max_events-1; max_events is padding) and positions 0..max_tokens-1.
            self.journey_index_emb = nn.Embedding(cfg.max_events + 1, d)
            self.journey_pos_emb = nn.Embedding(cfg.max_tokens, d)
        self.dec_pos = nn.Embedding(cfg.path_length, d)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size)
        # Tied: the embeddings are N(0, 1) for the inputs' sake, so the head reads d ** -0.5 of the state to keep
        # the initial logits of unit scale.
        self.head_scale = d ** -0.5 if cfg.tied_head else 1.0
        if cfg.tied_head:
            self.head.weight = self.token_emb.weight
        if cfg.copy:
            # The pointer's keys are the last decoder layer's cross-attention keys (no extra encoder output).
            self.copy_query, self.copy_gate = nn.Linear(d, d), nn.Linear(d, 1)
            # A learned score per "events ago": the causal memory of an event cannot know how recent it is.
            self.copy_recency = nn.Embedding(cfg.max_events, 1)
            nn.init.zeros_(self.copy_recency.weight)
            # A learned bonus for the events whose token at the previous level is the one just written: the
            # pointer then follows one item's path down the levels instead of re-choosing at each.
            self.copy_match = nn.Parameter(torch.tensor(2.0))
        if cfg.item_buckets:
            self.item_bucket_emb = nn.Embedding(cfg.item_buckets, d)
            nn.init.normal_(self.item_bucket_emb.weight, std=0.02)  # starts as a small change to the token sum
            # Fixed odd multipliers < 2**20, one per path level: tokens < 2**20 and paths of a few levels keep
            # the sum far from int64 overflow, in torch and in the ONNX graph alike.
            mult = torch.randint(0, 1 << 19, (cfg.path_length,), generator=torch.Generator().manual_seed(7919)) * 2 + 1
            self.register_buffer("item_hash_mult", mult.long())
        if cfg.item_head:
            self.item_query = nn.Linear(d, d)
            self.register_buffer("item_paths", torch.zeros(cfg.item_head + 1, cfg.path_length, dtype=torch.long))
        level_bias = torch.zeros(cfg.path_length, cfg.vocab_size)
        if cfg.level_offsets is not None:
            off = cfg.level_offsets
            for p in range(cfg.path_length):
                level_bias[p, :off[p]] = NEG_INF
                level_bias[p, off[p + 1]:] = NEG_INF
        self.register_buffer("level_bias", level_bias, persistent=False)  # [path_length, V], from the config

    def head_input(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.head_scale == 1.0 else h * self.head_scale

    def set_item_paths(self, item_paths) -> None:
        """The catalog's item paths [N+1, P] (row 0 the padding item), for the item head."""
        paths = torch.as_tensor(item_paths, dtype=torch.long)
        if paths.shape != self.item_paths.shape:
            raise ValueError(f"item_paths must be {tuple(self.item_paths.shape)}, got {tuple(paths.shape)}")
        self.item_paths.copy_(paths)

    def item_vectors(self) -> torch.Tensor:
        """[N+1, d]: each item's vector for the item head (row 0, the padding item, is never scored)."""
        vectors = self.token_emb(self.item_paths).sum(dim=1) * self.cfg.path_length ** -0.5
        if self.cfg.item_buckets:  # the item's own vector too, as in the event memory
            vectors = vectors + self.item_bucket_emb((self.item_paths * self.item_hash_mult).sum(-1) % self.cfg.item_buckets)
        return vectors

    def item_scores(self, states: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder states [..., d] (one per event, GraceModel.event_states) -> item logits [..., N+1] (the
        padding item at NEG_INF)."""
        vectors = self.item_vectors() if vectors is None else vectors
        scores = self.item_query(states) @ vectors.T * self.cfg.d_model ** -0.5
        return scores.index_fill(-1, torch.zeros(1, dtype=torch.long, device=scores.device), NEG_INF)

    def event_states(self, memory: torch.Tensor) -> torch.Tensor:
        """Encoder memory -> [B, E, d], the state after each event (its last token's with token memory)."""
        return memory if self.cfg.event_memory else memory[:, self.cfg.tokens_per_event - 1::self.cfg.tokens_per_event]

    def encode(self, tokens: torch.Tensor, valid: torch.Tensor, journey_ids: torch.Tensor,
               journey_pos: torch.Tensor) -> torch.Tensor:
        """tokens [B,T] left-padded with whole events, valid [B,T] float (1 real, 0 pad), journey_ids [B,T]
        (journey index per token, nondecreasing, -1 on padding), journey_pos [B,T] (token position inside its
        journey) -> memory [B,T,d] ([B,T/tokens_per_event,d] with event_memory)."""
        t = tokens.shape[1]
        tpe = self.cfg.tokens_per_event
        idx = torch.arange(t, device=tokens.device)
        slot = (tpe - 1) - ((t - 1) - idx) % tpe  # padding is whole events: the slot inside the event
        # Positions from the first real token (padding 0): a token's position never depends on later tokens.
        position = (valid.cumsum(dim=1) - 1).clamp(min=0, max=self.cfg.max_tokens - 1).long()
        x = self.token_emb(tokens) + self.enc_pos(position) + self.slot_emb(slot)
        if self.cfg.use_journeys:
            journey = torch.where(journey_ids < 0, self.cfg.max_events, journey_ids.clamp(max=self.cfg.max_events - 1))
            x = x + self.journey_index_emb(journey) + self.journey_pos_emb(journey_pos)
        if self.cfg.event_memory:
            b, _, d = x.shape
            x = x.reshape(b, t // tpe, tpe, d).sum(dim=2) * tpe ** -0.5
            if self.cfg.item_buckets:
                x = x + self.item_bucket_emb(self.item_buckets_of(tokens))
            valid, journey_ids = self.memory_valid(valid), journey_ids[:, tpe - 1::tpe]
            t = t // tpe
        pad_bias = (1.0 - valid) * NEG_INF
        bias = pad_bias[:, None, None, :]
        if self.cfg.causal_encoder:
            causal = torch.triu(torch.full((t, t), NEG_INF, device=tokens.device), diagonal=1)
            bias = bias + causal[None, None]
        for block in self.encoder:
            x = block(x, bias, journey_ids, valid)
        return self.enc_norm(x)

    def item_buckets_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Histories of whole events [B,T] -> each event's item hash bucket [B,T/tokens_per_event]."""
        return (event_paths(tokens, self.cfg.tokens_per_event) * self.item_hash_mult).sum(-1) % self.cfg.item_buckets

    def memory_length(self, tokens: int) -> int:
        """Memory positions of a history of `tokens` tokens (the cross_kv length)."""
        return tokens // self.cfg.tokens_per_event if self.cfg.event_memory else tokens

    def memory_valid(self, valid: torch.Tensor) -> torch.Tensor:
        """Token-level valid [B,T] -> valid of the memory's positions (one per event with event_memory; the
        padding is whole events, so an event's last token tells)."""
        return valid[:, self.cfg.tokens_per_event - 1::self.cfg.tokens_per_event] if self.cfg.event_memory else valid

    def cross_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """Cross-attention keys/values of every decoder layer, computed once per request and reused by
        every beam and step: [layers, 2, B, H, T, hd]."""
        return torch.stack([torch.stack(block.cross.project_kv(memory)) for block in self.decoder])

    def empty_cache(self, beams: int) -> torch.Tensor:
        """Decoder self-attention KV cache before the first step: [layers, 2, beams, H, 0, hd]."""
        c = self.cfg
        return torch.zeros(c.decoder_layers, 2, beams, c.num_heads, 0, c.d_model // c.num_heads)

    def memory_paths(self, tokens: torch.Tensor) -> torch.Tensor:
        """History tokens [B,T] -> the item path of each event [B,E,P]; what the copy path copies from."""
        return event_paths(tokens, self.cfg.tokens_per_event)

    def mix_copy(self, logits: torch.Tensor, h: torch.Tensor, keys: torch.Tensor, memory_bias: torch.Tensor,
                 events_ago: torch.Tensor, paths: torch.Tensor, follows: torch.Tensor) -> torch.Tensor:
        """logits [R,Q,V] (level-restricted) and final decoder states h [R,Q,d] of Q queries per memory, that
        memory's keys [R,H,T,hd], memory_bias [R,Q|1,T] (additive), events_ago [Q|1,T] (how many events
        before the query's each memory event is), paths [R,Q,T] (the token each memory event would be copied
        as, at the query's level), follows [R,Q,T] (1 where the event's token at the previous level is the
        query's input token) -> log-probabilities [R,Q,V] of gate * generate + (1 - gate) * copy."""
        r, q, _ = h.shape
        heads, hd = keys.shape[1], keys.shape[3]
        query = self.copy_query(h).reshape(r, q, heads, hd).transpose(1, 2)  # [R,H,Q,hd]
        recency = self.copy_recency(events_ago.clamp(min=0, max=self.cfg.max_events - 1))[..., 0]
        scores = ((query @ keys.transpose(-1, -2)).sum(dim=1) * (heads * hd) ** -0.5 + memory_bias + recency
                  + self.copy_match * follows)
        copied = torch.zeros_like(logits).scatter_add(-1, paths, scores.softmax(-1))
        gate = torch.sigmoid(self.copy_gate(h))
        return torch.log((gate * logits.softmax(-1) + (1.0 - gate) * copied).clamp_min(1e-30))

    def decode_cached(self, new_tokens: torch.Tensor, past: torch.Tensor, cross_kv: torch.Tensor,
                      memory_valid: torch.Tensor, memory_paths: torch.Tensor | None = None,
                      level_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """new_tokens [B,S_new] continue prefixes whose self-attention K/V are `past` [layers,2,B,H,S_past,hd]
        -> (scores [B,S_new,V], present [layers,2,B,H,S_past+S_new,hd]); scores are logits, or log-probabilities
        with the copy path (which needs memory_paths [R,E,P], the events' item paths). cross_kv and memory_valid
        have batch R dividing B: memory r serves rows r*B/R .. (r+1)*B/R-1 (R = 1: all B prefixes are one
        request's beams; R > 1: several requests' beams, decoded in one call). level_tokens [n] (with
        level_offsets, every query at one path level): score only that level's tokens, the range
        [off[p], off[p+1]); the other tokens' scores would be NEG_INF (level_bias), so the result is the same
        columns at about a quarter of the head and softmax; scores are then [B,S_new,n]."""
        s_new, s_past = new_tokens.shape[1], past.shape[4]
        pos = torch.arange(s_new, device=new_tokens.device) + s_past
        x = self.token_emb(new_tokens) + self.dec_pos(pos)
        # Causal over the whole (past + new) prefix: new token i sees past and new tokens up to itself.
        key_pos = torch.arange(s_past + s_new, device=new_tokens.device)
        causal = torch.where(key_pos[None, :] <= pos[:, None], 0.0, NEG_INF)[None, None]
        memory_bias = ((1.0 - self.memory_valid(memory_valid)) * NEG_INF)[:, None, None, :]
        present = []
        for layer, block in enumerate(self.decoder):
            x, kv = block(x, (past[layer, 0], past[layer, 1]), causal, (cross_kv[layer, 0], cross_kv[layer, 1]),
                          memory_bias)
            present.append(torch.stack(kv))
        h = self.dec_norm(x)
        if level_tokens is None:
            logits = self.head(self.head_input(h)) + self.level_bias[pos]
        else:
            logits = self.head_input(h) @ self.head.weight[level_tokens].T + self.head.bias[level_tokens]
        if not self.cfg.copy:
            return logits, torch.stack(present)
        if memory_paths is None:
            raise ValueError("a model with the copy path decodes with memory_paths")
        b, r = h.shape[0], cross_kv.shape[2]
        # Each query copies the token of its own path level from every event: [R, B/R * S_new, E].
        by_level = memory_paths.transpose(1, 2)  # [R, P, E]
        t = by_level.shape[-1]
        paths = by_level[:, pos][:, None].expand(r, b // r, s_new, t)  # [R, B/R, S_new, E]
        if level_tokens is not None:  # the level's columns; a padding event's token (masked) maps anywhere valid
            paths = (paths - level_tokens[0]).clamp(min=0, max=logits.shape[-1] - 1)
        previous = by_level[:, (pos - 1).clamp(min=0)][:, None]  # the events' tokens one level up
        follows = (previous == new_tokens.reshape(r, b // r, s_new, 1)) & (pos > 0)[:, None]
        # left-padded: every request's latest event is the memory's last position
        events_ago = (t - 1 - torch.arange(t, device=h.device))[None]
        scores = self.mix_copy(logits.reshape(r, -1, logits.shape[-1]), h.reshape(r, -1, h.shape[-1]),
                               cross_kv[-1, 0], memory_bias[:, 0], events_ago, paths.reshape(r, -1, t),
                               follows.reshape(r, -1, t).to(h.dtype))
        return scores.reshape(logits.shape), torch.stack(present)

    def decode(self, prefix: torch.Tensor, cross_kv: torch.Tensor, memory_valid: torch.Tensor,
               memory_paths: torch.Tensor | None = None) -> torch.Tensor:
        """prefix [B,S] (starts with BOS) -> scores [B,S,V] for the next token at each position (logits, or
        log-probabilities with the copy path)."""
        return self.decode_cached(prefix, self.empty_cache(prefix.shape[0]).to(cross_kv), cross_kv, memory_valid,
                                  memory_paths)[0]

    def decode_step(self, last_tokens: torch.Tensor, past: torch.Tensor, cross_kv: torch.Tensor,
                    memory_valid: torch.Tensor, memory_paths: torch.Tensor | None = None,
                    level_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One beam-search step: last_tokens [B] -> (log-probabilities of the next token [B,V], or [B,n] over
        level_tokens, present KV)."""
        scores, present = self.decode_cached(last_tokens[:, None], past, cross_kv, memory_valid, memory_paths,
                                             level_tokens)
        return (scores[:, -1] if self.cfg.copy else scores[:, -1].log_softmax(-1)), present

    def forward(self, tokens, valid, journey_ids, journey_pos, target_paths):
        """Teacher forcing: logits [B, path_length, V] for the target item path."""
        memory = self.encode(tokens, valid, journey_ids, journey_pos)
        bos = torch.full_like(target_paths[:, :1], BOS)
        prefix = torch.cat([bos, target_paths[:, :-1]], dim=1)
        return self.decode(prefix, self.cross_kv(memory), valid, self.memory_paths(tokens))

    def forward_positions(self, tokens, valid, journey_ids, journey_pos, next_paths, with_states: bool = False):
        """Teacher forcing after every event: next_paths [B, E, P] is the path of the item that follows each
        of the E = T / tokens_per_event event slots (right-aligned like the history; rows of padding slots are
        ignored by the caller) -> logits [B, E, P, V] (log-probabilities with the copy path). The decoder of
        slot e cross-attends only to the events up to e, so its logits equal those of `forward` on that prefix
        alone (causal encoder). with_states: also the encoder state after each event [B, E, d] (the item head's
        input)."""
        b, e, p = next_paths.shape
        t, tpe = tokens.shape[1], self.cfg.tokens_per_event
        if t != e * tpe:
            raise ValueError(f"next_paths has {e} event slots; the history has {t} tokens of {tpe} per event")
        memory = self.encode(tokens, valid, journey_ids, journey_pos)
        prefix = torch.cat([torch.full_like(next_paths[..., :1], BOS), next_paths[..., :-1]], dim=-1)
        step = torch.arange(p, device=tokens.device)
        x = (self.token_emb(prefix) + self.dec_pos(step)).reshape(b, e * p, -1)
        self_bias = torch.where(step[None, :] <= step[:, None], 0.0, NEG_INF)[None, None]
        per_event = 1 if self.cfg.event_memory else tpe  # memory positions per event
        event_end = (torch.arange(e, device=tokens.device) + 1) * per_event  # exclusive end of each slot
        sees = torch.arange(memory.shape[1], device=tokens.device)[None, :] < event_end[:, None]  # [E, T_memory]
        memory_valid = self.memory_valid(valid)
        memory_bias = torch.where(sees.repeat_interleave(p, dim=0)[None] & (memory_valid[:, None, :] > 0), 0.0, NEG_INF)
        memory_bias = memory_bias[:, None]  # [B, 1, E*P, T]
        for block in self.decoder:
            keys_values = block.cross.project_kv(memory)
            x = block.forward_groups(x, p, self_bias, keys_values, memory_bias)
        h = self.dec_norm(x)
        logits = (self.head(self.head_input(h)).reshape(b, e, p, -1) + self.level_bias).reshape(b, e * p, -1)
        if self.cfg.copy:
            # Query (slot, level) copies its level's token of each event: [B, E*P, E].
            by_level = self.memory_paths(tokens).transpose(1, 2)  # [B, P, E]
            paths = by_level[:, None].expand(b, e, p, e).reshape(b, e * p, e)
            previous = by_level[:, (step - 1).clamp(min=0)]  # [B, P, E]: the events' tokens one level up
            follows = (previous[:, None] == prefix[..., None]) & (step > 0)[:, None]  # [B, E, P, E]
            slot = torch.arange(e, device=tokens.device)
            events_ago = (slot[:, None] - slot[None, :]).repeat_interleave(p, dim=0)  # [E*P, E]; < 0 is masked
            logits = self.mix_copy(logits, h, keys_values[0], memory_bias[:, 0], events_ago, paths,
                                   follows.reshape(b, e * p, e).to(h.dtype))
        logits = logits.reshape(b, e, p, -1)
        return (logits, self.event_states(memory)) if with_states else logits


CHECKPOINT_FILE = "grace.pt"  # torch checkpoint beside the ONNX export; the in-process reference runs it


def save_checkpoint(model: GraceModel, directory: Path) -> None:
    checkpoint.save(model, Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(directory: Path) -> GraceModel:
    return checkpoint.load(Path(directory) / CHECKPOINT_FILE, lambda cfg: GraceModel(GraceConfig(**cfg)))
