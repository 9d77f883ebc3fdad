"""GRACE's model: the journey embeddings are sized by the input limits (no journey position or index is
clamped); the encoder is prefix-invariant, so supervising every position (forward_positions) trains exactly
what serving computes for each prefix; the level-restricted softmax normalises over the level's tokens only."""

import numpy as np
import pytest
import torch

from models.grace.model import NEG_INF, GraceConfig, GraceModel
from serving.grace.tokenizer import BOS


def test_long_journey_positions_are_distinct_not_clamped():
    cfg = GraceConfig(vocab_size=50, max_tokens=32 * 9, tokens_per_event=9, d_model=16, num_heads=2,
                      encoder_layers=1, decoder_layers=1, dropout=0.0)
    model = GraceModel(cfg).eval()
    assert model.journey_pos_emb.num_embeddings == 288 and model.journey_index_emb.num_embeddings == 33
    t = cfg.max_tokens
    tokens = torch.randint(1, 50, (1, t), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(1, t)
    one_journey = torch.zeros(1, t, dtype=torch.long)
    positions = torch.arange(t)[None]
    memory = model.encode(tokens, valid, one_journey, positions)  # positions up to 287: no index error
    clamped = model.encode(tokens, valid, one_journey, positions.clamp(max=127))
    assert not torch.allclose(memory[:, -1], clamped[:, -1])  # position 287 is not position 127
    # 32 journeys of one event each, plus left padding (-1): indices 0..31 and padding have their own row.
    padded = torch.cat([torch.full((1, 9), -1), torch.arange(32).repeat_interleave(9)[None, :-9]], 1)
    assert model.encode(tokens, valid, padded, torch.arange(9).repeat(32)[None]).isfinite().all()


TPE, PATH = 3, 2  # behaviour token + a 2-level item path per event
OFFSETS = (10, 20, 30)  # level 0 owns tokens 10..19, level 1 owns 20..29


def _model(seed: int = 0, **kw) -> GraceModel:
    torch.manual_seed(seed)
    cfg = GraceConfig(vocab_size=30, max_tokens=8 * TPE, path_length=PATH, tokens_per_event=TPE, d_model=16,
                      num_heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0, level_offsets=OFFSETS, **kw)
    model = GraceModel(cfg).eval()
    if cfg.copy:  # zero at initialisation: random here, so that a recency misaligned with serving shows
        torch.nn.init.normal_(model.copy_recency.weight, std=2.0)
    return model


def _history(events: int, rng) -> tuple[torch.Tensor, ...]:
    paths = np.stack([rng.integers(10, 20, events), rng.integers(20, 30, events)], 1)
    tokens = np.concatenate([rng.integers(2, 5, (events, 1)), paths], 1).reshape(-1)
    journeys = np.repeat(np.cumsum(rng.random(events) < 0.4), TPE)
    jpos = np.concatenate([np.arange(np.sum(journeys == j)) for j in np.unique(journeys)])
    return tokens, journeys - journeys[0], jpos, paths


@pytest.mark.parametrize("causal_journeys", [True, False])
@pytest.mark.parametrize("memory", ["tokens", "events", "events+copy", "events+items"])
def test_every_position_is_supervised_exactly_as_its_prefix_is_served(causal_journeys, memory):
    """forward_positions' logits for event slot e of a left-padded batch == forward() on the history cut after
    event e, served alone without padding. Fails if a position, journey or mask leaks a later token."""
    model = _model(use_journeys=causal_journeys, event_memory=memory != "tokens", copy=memory == "events+copy",
                   item_buckets=64 if memory == "events+items" else 0)
    rng = np.random.default_rng(1)
    lengths = [5, 3]
    rows = [_history(n, rng) for n in lengths]
    e = max(lengths)
    tokens = torch.zeros(2, e * TPE, dtype=torch.long)
    valid = torch.zeros(2, e * TPE)
    jid = torch.full((2, e * TPE), -1, dtype=torch.long)
    jpos = torch.zeros(2, e * TPE, dtype=torch.long)
    next_paths = torch.zeros(2, e, PATH, dtype=torch.long)
    targets = [np.vstack([r[3][1:], [[11, 21]]]) for r in rows]  # the next event's path, then a final target
    for b, (n, (tok, j, jp, _)) in enumerate(zip(lengths, rows)):
        s = (e - n) * TPE
        tokens[b, s:], valid[b, s:], jid[b, s:], jpos[b, s:] = map(torch.as_tensor, (tok, np.ones(n * TPE, np.float32), j, jp))
        next_paths[b, e - n:] = torch.as_tensor(targets[b])
    with torch.no_grad():
        every = model.forward_positions(tokens, valid, jid, jpos, next_paths)
        for b, (n, (tok, j, jp, _)) in enumerate(zip(lengths, rows)):
            for event in range(n):
                cut = (event + 1) * TPE
                alone = model(*(torch.as_tensor(a[:cut])[None] for a in (tok, np.ones(n * TPE, np.float32), j, jp)),
                              torch.as_tensor(targets[b][event])[None])
                torch.testing.assert_close(every[b, e - n + event], alone[0], atol=1e-4, rtol=1e-4)
    assert every.shape == (2, e, PATH, 30)


def test_level_restricted_softmax_puts_all_mass_on_the_levels_tokens():
    model = _model()
    rng = np.random.default_rng(2)
    tok, j, jp, _ = _history(4, rng)
    feeds = [torch.as_tensor(a)[None] for a in (tok, np.ones(len(tok), np.float32), j, jp)]
    with torch.no_grad():
        cross_kv = model.cross_kv(model.encode(*feeds))
        log_probs, past = model.decode_step(torch.tensor([BOS]), model.empty_cache(1), cross_kv, feeds[1])
        assert torch.isclose(log_probs[0, 10:20].exp().sum(), torch.tensor(1.0), atol=1e-5)
        log_probs, _ = model.decode_step(torch.tensor([13]), past, cross_kv, feeds[1])
        assert torch.isclose(log_probs[0, 20:30].exp().sum(), torch.tensor(1.0), atol=1e-5)
    assert (model.level_bias[0, 20:] == NEG_INF).all() and (model.level_bias[1, 20:] == 0).all()


def test_level_offsets_must_match_the_path():
    with pytest.raises(ValueError, match="level_offsets"):
        GraceConfig(vocab_size=30, max_tokens=24, path_length=2, tokens_per_event=3, level_offsets=(10, 20))


def test_copy_path_can_put_all_mass_on_the_historys_tokens():
    """With the gate shut on generation, the first path level's distribution is exactly the pointer's: all its
    mass on the level-0 tokens of the history's events (never on a padding event's), none elsewhere."""
    model = _model(event_memory=True, copy=True)
    with torch.no_grad():
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.fill_(-50.0)  # sigmoid -> 0: copy only
    rng = np.random.default_rng(3)
    tokens, journeys, jpos, paths = _history(4, rng)
    pad = 2 * TPE  # two padding events in front, whose (zero) paths must get nothing
    tokens, journeys, jpos = (torch.as_tensor(np.r_[np.full(pad, fill), a])[None]
                              for a, fill in ((tokens, 0), (journeys, -1), (jpos, 0)))
    valid = (tokens > 0).float()
    with torch.no_grad():
        log_probs = model(tokens, valid, journeys, jpos, torch.as_tensor(paths[:1]))[0, 0]
    probs = log_probs.exp()
    history_level0 = np.unique(paths[:, 0])
    assert float(probs[history_level0].sum()) == pytest.approx(1.0, abs=1e-5)
    others = np.setdiff1d(np.arange(30), history_level0)
    assert float(probs[others].max()) < 1e-6


def test_item_buckets_give_each_item_path_its_own_vector():
    """The hash reads the path only (not the behaviour), is the same in every position and batch row, and the
    bucket vector is added to the event's memory; item_buckets needs event memory."""
    with pytest.raises(ValueError, match="event_memory"):
        _model(item_buckets=64)
    model = _model(event_memory=True, item_buckets=64)
    rng = np.random.default_rng(0)
    tokens, *_ = _history(6, rng)
    tokens = torch.as_tensor(tokens)[None]
    buckets = model.item_buckets_of(tokens)
    assert buckets.shape == (1, 6) and int(buckets.min()) >= 0 and int(buckets.max()) < 64
    other_behaviour = tokens.clone()
    other_behaviour[0, ::TPE] = 2 + (other_behaviour[0, ::TPE] - 1) % 3
    torch.testing.assert_close(model.item_buckets_of(other_behaviour), buckets)
    paths = tokens.reshape(6, TPE)[:, 1:]
    want = (paths * model.item_hash_mult).sum(-1) % 64
    torch.testing.assert_close(buckets[0], want)
    valid, jid, jpos = torch.ones(1, 6 * TPE), torch.zeros(1, 6 * TPE, dtype=torch.long), torch.arange(6 * TPE)[None]
    with torch.no_grad():
        before = model.encode(tokens, valid, jid, jpos)
        torch.nn.init.normal_(model.item_bucket_emb.weight, std=1.0)  # a constant shift would vanish in LayerNorm
        assert (model.encode(tokens, valid, jid, jpos) - before).abs().max() > 1e-3


def test_item_bucket_count_is_a_power_of_two_with_room():
    from models.grace.recommender import item_bucket_count  # noqa: PLC0415

    for n in (1, 5, 1500, 1682, 4096):
        count = item_bucket_count(n)
        assert count >= 4 * n and count & (count - 1) == 0 and count < 8 * n + 16
