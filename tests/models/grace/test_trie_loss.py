"""GraceTrainConfig.trie_loss: the allowed-children masks equal the item trie (ItemTokenizer.build_trie), the
loss's softmax gives disallowed tokens no probability and differs from the level-wide loss, the copy path's
mixture is renormalised over the same children, and the reference retrieval scores what was trained."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.grace.model import GraceConfig, GraceModel
from models.grace.recommender import (GraceRecommender, GraceTrainConfig, TrieNormalizedStep, path_loss,
                                     trie_allowed_tokens)
from serving.grace.tokenizer import ItemTokenizer

OFFSETS = np.array([10, 14, 20, 26, 30])  # 4 levels: 10..13, 14..19, 20..25, 26..29


def _tokenizer(n: int = 60, seed: int = 0) -> ItemTokenizer:
    """n items whose paths share prefixes (few tokens per level) and are distinct."""
    rng = np.random.default_rng(seed)
    sizes = np.diff(OFFSETS)
    codes = set()
    while len(codes) < n:
        codes.add(tuple(int(rng.integers(0, s)) for s in sizes))
    paths = np.array(sorted(codes), np.int64) + OFFSETS[:-1]
    paths = np.concatenate([np.zeros((1, 4), np.int64), rng.permutation(paths)])
    return ItemTokenizer(item_paths=paths, level_offsets=OFFSETS, behavior_offset=2, num_behaviors=8,
                         level_names=("sid_0", "sid_1", "sid_2", "code"), variant="sid")


def test_default_is_on_and_decoding_follows_the_loss():
    assert GraceTrainConfig().trie_loss is True  # the default since it won on both data sets
    assert dataclasses.replace(GraceTrainConfig(), trie_loss=False).trie_loss is False
    # The reference retrieval renormalises over the children with the trie loss, unless told otherwise.
    for loss, decode, expected in [(False, None, False), (True, None, True), (True, False, False), (False, True, True)]:
        cfg = dataclasses.replace(GraceTrainConfig(), trie_loss=loss, trie_decode=decode)
        assert GraceRecommender("grace_jsa", cfg, cache_dir=None).trie_decode is expected


def test_allowed_tokens_are_exactly_the_tries_children():
    tok = _tokenizer()
    allowed = trie_allowed_tokens(tok.item_paths, tok.vocab_size).numpy()
    trie = tok.build_trie()
    assert allowed.shape == (tok.num_items + 1, 4, 30) and allowed[0].all()
    for item in range(1, tok.num_items + 1):
        path = tok.item_paths[item].tolist()
        for p in range(4):
            expected = np.zeros(30, bool)
            expected[trie[tuple(path[:p])]] = True
            assert (allowed[item, p] == expected).all(), (item, p)
            assert allowed[item, p, path[p]]  # the target itself is always allowed
    # Non-trivial: deeper levels are narrower than the level (else the test proves nothing).
    level_width = np.diff(OFFSETS)
    assert (allowed[1:, 0].sum(-1) == level_width[0]).all()
    assert (allowed[1:, 1:].sum(-1) < level_width[1:]).any()


def test_disallowed_tokens_get_no_probability_and_the_loss_is_restricted():
    tok = _tokenizer()
    allowed = trie_allowed_tokens(tok.item_paths, tok.vocab_size)
    items = torch.arange(1, tok.num_items + 1)
    target = torch.from_numpy(tok.item_paths)[items]
    logits = torch.randn(len(items), 4, 30, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = path_loss(logits, target, allowed[items])
    # The same loss by hand: a softmax over the allowed tokens only.
    mask = allowed[items]
    manual = []
    for i in range(len(items)):
        for p in range(4):
            ok = mask[i, p].nonzero()[:, 0]
            lp = logits[i, p, ok].log_softmax(-1)
            manual.append(-lp[(ok == target[i, p]).nonzero()[0, 0]])
    assert torch.allclose(loss, torch.stack(manual).mean(), atol=1e-5)
    assert loss < path_loss(logits, target) - 1e-3  # not the unrestricted loss (a superset softmax)
    # A disallowed token's probability is 0: no gradient reaches its logit, and its score cannot change the loss.
    loss.backward()
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).any()
    bumped = logits.detach().clone()
    bumped[~mask] += 50.0
    assert torch.allclose(path_loss(bumped, target, mask), loss.detach(), atol=1e-5)
    assert path_loss(bumped, target) > loss + 10.0


def test_copy_paths_mixture_is_renormalised_over_the_children():
    """With the copy path the model returns log-probabilities of the generate/copy mixture; the restricted loss
    is -log(p(target) / sum of p over the allowed children), whatever mass the copy puts elsewhere."""
    tok = _tokenizer()
    allowed = trie_allowed_tokens(tok.item_paths, tok.vocab_size)
    torch.manual_seed(0)
    cfg = GraceConfig(vocab_size=30, max_tokens=6 * 5, path_length=4, tokens_per_event=5, d_model=16, num_heads=2,
                      encoder_layers=1, decoder_layers=1, dropout=0.0, level_offsets=tuple(OFFSETS.tolist()),
                      event_memory=True, copy=True)
    model = GraceModel(cfg).eval()
    rng = np.random.default_rng(3)
    history = rng.integers(1, tok.num_items + 1, 6)
    tokens = torch.from_numpy(tok.event_tokens(history, np.full(6, 2)))[None]
    nxt = torch.from_numpy(rng.integers(1, tok.num_items + 1, (1, 6)))
    paths = torch.from_numpy(tok.item_paths)
    log_probs = model.forward_positions(tokens, torch.ones_like(tokens, dtype=torch.float),
                                        torch.zeros_like(tokens), torch.arange(30)[None], paths[nxt])
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(1, 6, 4), atol=1e-4)  # a distribution per level
    mask, target = allowed[nxt], paths[nxt]
    p_target = log_probs.exp().gather(-1, target[..., None])[..., 0]
    p_allowed = (log_probs.exp() * mask).sum(-1)
    assert (p_allowed < 1 - 1e-3).any()  # the mixture does put mass outside the children
    expected = -(p_target / p_allowed).log().mean()
    assert torch.allclose(path_loss(log_probs, target, mask), expected, atol=1e-4)
    assert not torch.allclose(path_loss(log_probs, target), expected, atol=1e-3)


def test_trie_normalized_step_is_a_distribution_over_each_beams_children():
    tok = _tokenizer()
    trie = tok.build_trie()
    rng = np.random.default_rng(0)
    beams = np.concatenate([np.full((5, 1), 1), tok.item_paths[rng.integers(1, tok.num_items + 1, 5), :2]], 1)
    raw = rng.normal(size=(5, 30))
    raw = raw - np.log(np.exp(raw).sum(-1, keepdims=True))
    out = TrieNormalizedStep(lambda b, parents: raw, trie)(beams, None)
    for b, prefix in enumerate(beams[:, 1:].tolist()):
        ok = trie[tuple(prefix)]
        assert np.isclose(np.exp(out[b, ok]).sum(), 1.0)
        assert np.isneginf(np.delete(out[b], ok)).all()
        # ranks the children as the raw scores do, shifted by one constant per beam
        assert np.allclose(out[b, ok] - raw[b, ok], out[b, ok[0]] - raw[b, ok[0]])


@pytest.mark.parametrize("copy", [False, True])
def test_train_model_with_trie_loss_trains(copy):
    """One tiny run end to end (both supervision modes' code path: every position), loss finite."""
    from models.grace import recommender  # noqa: PLC0415

    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = GraceConfig(vocab_size=30, max_tokens=6 * 5, path_length=4, tokens_per_event=5, d_model=16, num_heads=2,
                      encoder_layers=1, decoder_layers=1, dropout=0.0, level_offsets=tuple(OFFSETS.tolist()),
                      event_memory=True, copy=copy)
    model = GraceModel(cfg)
    paths = torch.from_numpy(tok.item_paths)
    allowed = trie_allowed_tokens(tok.item_paths, 30)
    nxt = torch.from_numpy(np.random.default_rng(1).integers(1, tok.num_items + 1, (2, 6)))
    tokens = torch.from_numpy(np.stack([tok.event_tokens(np.roll(n, 1), np.full(6, 2)) for n in nxt.numpy()]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = model.forward_positions(tokens, torch.ones_like(tokens, dtype=torch.float), torch.zeros_like(tokens),
                                      torch.arange(30).repeat(2, 1), paths[nxt])
        loss = recommender.path_loss(out, paths[nxt], allowed[nxt])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_label_smoothing_spreads_over_the_allowed_tokens_only():
    """eps on the allowed children uniformly, 1 - eps on the target; eps = 0 is the plain loss; disallowed
    tokens still get no probability (finite loss, no gradient) with smoothing on."""
    tok = _tokenizer()
    allowed = trie_allowed_tokens(tok.item_paths, tok.vocab_size)
    items = torch.arange(1, tok.num_items + 1)
    target = torch.from_numpy(tok.item_paths)[items]
    mask = allowed[items]
    logits = torch.randn(len(items), 4, 30, generator=torch.Generator().manual_seed(1), requires_grad=True)
    eps = 0.2
    loss = path_loss(logits, target, mask, label_smoothing=eps)
    manual = []
    for i in range(len(items)):
        for p in range(4):
            ok = mask[i, p].nonzero()[:, 0]
            lp = logits[i, p, ok].log_softmax(-1)
            nll = -lp[(ok == target[i, p]).nonzero()[0, 0]]
            manual.append((1 - eps) * nll + eps * (-lp).mean())
    assert torch.isfinite(loss) and torch.allclose(loss, torch.stack(manual).mean(), atol=1e-5)
    assert torch.allclose(path_loss(logits, target, mask, label_smoothing=0.0), path_loss(logits, target, mask))
    assert not torch.allclose(loss, path_loss(logits, target, mask), atol=1e-3)
    loss.backward()
    assert (logits.grad[~mask] == 0).all()
    # Without the trie masks the level mask (scores at NEG_INF) bounds the smoothing: still finite and equal to
    # smoothing over the unmasked tokens.
    levelled = logits.detach().clone()
    levelled[..., :10] = -1e9
    unmasked = torch.ones_like(mask)
    unmasked[..., :10] = False
    assert torch.allclose(path_loss(levelled, target, None, eps), path_loss(levelled, target, unmasked, eps), atol=1e-5)


def test_tied_head_shares_the_token_embeddings():
    base = dict(vocab_size=30, max_tokens=6 * 5, path_length=4, tokens_per_event=5, d_model=16, num_heads=2,
                level_offsets=tuple(OFFSETS.tolist()), event_memory=True)
    tied = GraceModel(GraceConfig(**base, tied_head=True))
    assert tied.head.weight is tied.token_emb.weight
    assert GraceModel(GraceConfig(**base)).head.weight is not GraceModel(GraceConfig(**base)).token_emb.weight
    # The level-restricted step (what the export serves) equals the full head's columns.
    torch.manual_seed(0)
    tied.eval()
    memory = torch.randn(1, 6, 16)
    cross_kv = tied.cross_kv(memory)
    valid = torch.ones(1, 30)
    last = torch.tensor([1])
    full, _ = tied.decode_step(last, tied.empty_cache(1), cross_kv, valid)
    level = torch.arange(10, 14)
    part, _ = tied.decode_step(last, tied.empty_cache(1), cross_kv, valid, level_tokens=level)
    assert torch.allclose(full[:, level], part, atol=1e-5)
    # A gradient through the head reaches the shared embedding rows of the written tokens.
    tied.train()
    target = torch.tensor([[10, 14, 20, 26]])
    logits = tied(torch.full((1, 30), 11), torch.ones(1, 30), torch.zeros(1, 30, dtype=torch.long),
                  torch.arange(30)[None] % 5, target)
    path_loss(logits, target).backward()
    assert tied.token_emb.weight.grad[26].abs().sum() > 0


def test_jsa_geometry_settings():
    """jsa_block sets the block, compression and window; jsa_window overrides the window alone; the full config
    is what the checkpoint records."""
    def geometry(**kw):
        cfg = GraceRecommender("grace_jsa", dataclasses.replace(GraceTrainConfig(), **kw), cache_dir=None)._jsa_config()
        return {k: cfg[k] for k in ("block", "compress_block", "compress_stride", "window")}

    assert geometry(jsa_block=8) == dict(block=8, compress_block=8, compress_stride=8, window=8)
    assert geometry(jsa_block=8, jsa_window=64) == dict(block=8, compress_block=8, compress_stride=8, window=64)
    assert geometry() == dict(block=64, compress_block=64, compress_stride=64, window=64)
    assert GraceRecommender("grace_dense", GraceTrainConfig(), cache_dir=None)._jsa_config() is None
