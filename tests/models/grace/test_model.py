"""GRACE's encoder inputs: the journey embeddings are sized by the input limits, so no journey position or
distance is clamped (a single journey filling a 32-event history reaches 32 x tokens_per_event positions)."""

import torch

from models.grace.model import GraceConfig, GraceModel


def test_long_journey_positions_are_distinct_not_clamped():
    cfg = GraceConfig(vocab_size=50, max_tokens=32 * 9, tokens_per_event=9, d_model=16, num_heads=2,
                      encoder_layers=1, decoder_layers=1, dropout=0.0)
    model = GraceModel(cfg).eval()
    assert model.journey_pos_emb.num_embeddings == 288 and model.journey_back_emb.num_embeddings == 33
    t = cfg.max_tokens
    tokens = torch.randint(1, 50, (1, t), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(1, t)
    one_journey = torch.zeros(1, t, dtype=torch.long)
    positions = torch.arange(t)[None]
    memory = model.encode(tokens, valid, one_journey, positions)  # positions up to 287: no index error
    clamped = model.encode(tokens, valid, one_journey, positions.clamp(max=127))
    assert not torch.allclose(memory[:, -1], clamped[:, -1])  # position 287 is not position 127
    # 32 journeys of one event each, plus left padding (-1): distances 0..32 all have their own row.
    padded = torch.cat([torch.full((1, 9), -1), torch.arange(32).repeat_interleave(9)[None, :-9]], 1)
    assert model.encode(tokens, valid, padded, torch.arange(9).repeat(32)[None]).isfinite().all()
