"""GraceConfig.item_head: item vectors are the scaled sums of the items' path-token embeddings (the padding item
never scored), forward_positions' states are the encoder's state after each event, and the reference retrieval's
three modes return what they say: the beam alone, the item head's top items, and the union of both ranked by the
sum of the exact (teacher-forced) path log-probability and the item head's log-probability."""

import numpy as np
import pytest
import torch

from models.grace.model import GraceConfig, GraceModel
from models.grace.recommender import grace_retrieve, path_loss, trie_allowed_tokens
from serving.grace.tokenizer import ItemTokenizer

OFFSETS = np.array([10, 14, 20, 26, 30])


def _tokenizer(n: int = 60) -> ItemTokenizer:
    rng = np.random.default_rng(0)
    codes = set()
    while len(codes) < n:
        codes.add(tuple(int(rng.integers(0, s)) for s in np.diff(OFFSETS)))
    paths = np.array(sorted(codes), np.int64) + OFFSETS[:-1]
    paths = np.concatenate([np.zeros((1, 4), np.int64), rng.permutation(paths)])
    return ItemTokenizer(item_paths=paths, level_offsets=OFFSETS, behavior_offset=2, num_behaviors=8,
                         level_names=("sid_0", "sid_1", "sid_2", "code"), variant="sid")


def _model(tok: ItemTokenizer, **kw) -> GraceModel:
    torch.manual_seed(0)
    cfg = GraceConfig(vocab_size=30, max_tokens=6 * 5, path_length=4, tokens_per_event=5, d_model=16, num_heads=2,
                      encoder_layers=1, decoder_layers=1, dropout=0.0, level_offsets=tuple(OFFSETS.tolist()),
                      event_memory=True, item_head=tok.num_items, **kw)
    model = GraceModel(cfg).eval()
    model.set_item_paths(tok.item_paths)
    return model


def _history(tok: ItemTokenizer, events: int = 5, seed: int = 3):
    history = np.random.default_rng(seed).integers(1, tok.num_items + 1, events)
    tokens = tok.event_tokens(history, np.full(events, 2))
    return history, tokens, np.zeros(len(tokens), np.int64), np.arange(len(tokens))


def test_item_vectors_and_scores():
    tok = _tokenizer()
    model = _model(tok)
    vectors = model.item_vectors()
    item = 7
    expected = model.token_emb.weight[torch.from_numpy(tok.item_paths[item])].sum(0) / 2.0  # 4 tokens: 4 ** -0.5
    assert torch.allclose(vectors[item], expected, atol=1e-6)
    scores = model.item_scores(torch.randn(3, 16))
    assert scores.shape == (3, tok.num_items + 1) and (scores[:, 0] < -1e8).all() and (scores[:, 1:] > -1e8).all()
    with pytest.raises(ValueError, match="item_paths must be"):
        model.set_item_paths(tok.item_paths[:-1])


def test_states_are_the_encoders_state_after_each_event():
    tok = _tokenizer()
    model = _model(tok)
    _, tokens, jid, jpos = _history(tok, 6)
    t = torch.from_numpy(tokens)[None]
    valid = torch.ones_like(t, dtype=torch.float)
    nxt = torch.from_numpy(tok.item_paths[np.arange(1, 7)])[None]
    logits, states = model.forward_positions(t, valid, torch.zeros_like(t), torch.from_numpy(jpos)[None], nxt,
                                             with_states=True)
    assert torch.equal(logits, model.forward_positions(t, valid, torch.zeros_like(t), torch.from_numpy(jpos)[None], nxt))
    memory = model.encode(t, valid, torch.zeros_like(t), torch.from_numpy(jpos)[None])
    assert torch.allclose(states, memory, atol=1e-6) and states.shape == (1, 6, 16)


def test_retrieval_modes():
    tok = _tokenizer()
    model = _model(tok)
    trie, path_to_item = tok.build_trie(), tok.path_to_item()
    allowed = trie_allowed_tokens(tok.item_paths, 30)
    history, tokens, jid, jpos = _history(tok)
    exclude = set(history.tolist())
    beam_items, beam_scores = grace_retrieve(model, trie, path_to_item, tokens, jid, jpos, 8, exclude, True, "beam")
    dense_items, dense_scores = grace_retrieve(model, trie, path_to_item, tokens, jid, jpos, 8, exclude, True, "dense")
    items, scores = grace_retrieve(model, trie, path_to_item, tokens, jid, jpos, 8, exclude, True, "hybrid", allowed)
    # dense: the item head's top 8 outside the history, best first
    t = torch.from_numpy(tokens)[None]
    memory = model.encode(t, torch.ones_like(t, dtype=torch.float), torch.from_numpy(jid)[None], torch.from_numpy(jpos)[None])
    log_p = model.item_scores(memory[0, -1]).log_softmax(-1).detach().numpy()
    log_p[0] = -np.inf
    log_p[list(exclude)] = -np.inf
    assert dense_items.tolist() == np.argsort(-log_p, kind="stable")[:8].tolist()
    assert np.allclose(dense_scores, log_p[dense_items], atol=1e-5)
    # hybrid: exactly the union, each scored path log-prob (trie-normalised, teacher forced) + item log-prob
    assert set(items.tolist()) == set(beam_items.tolist()) | set(dense_items.tolist())
    assert not exclude & set(items.tolist()) and (np.diff(scores) <= 1e-9).all()
    paths = torch.from_numpy(tok.item_paths[items])
    prefix = torch.cat([torch.ones_like(paths[:, :1]), paths[:, :-1]], 1)
    cross_kv = model.cross_kv(memory)
    generated = model.decode(prefix, cross_kv, torch.ones_like(t, dtype=torch.float))
    path_lp = -torch.stack([path_loss(generated[i:i + 1], paths[i:i + 1], allowed[items[i:i + 1]]) * 4
                            for i in range(len(items))]).detach().numpy()
    assert np.allclose(scores, path_lp + log_p[items], atol=1e-4)
    # the beam's own scores are those path log-probabilities
    by_item = dict(zip(items.tolist(), path_lp.tolist()))
    assert np.allclose(beam_scores, [by_item[i] for i in beam_items.tolist()], atol=1e-4)
    with pytest.raises(ValueError, match="needs `allowed`"):
        grace_retrieve(model, trie, path_to_item, tokens, jid, jpos, 8, exclude, True, "hybrid")
    with pytest.raises(ValueError, match="item_retrieval"):
        grace_retrieve(model, trie, path_to_item, tokens, jid, jpos, 8, exclude, True, "both")


def test_item_head_checkpoint_round_trip(tmp_path):
    from models.grace.model import load_checkpoint, save_checkpoint  # noqa: PLC0415

    tok = _tokenizer()
    model = _model(tok, tied_head=True)
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded.item_paths, model.item_paths) and loaded.head.weight is loaded.token_emb.weight
    assert torch.allclose(loaded.item_vectors(), model.item_vectors())
