"""ONNX export of tiny, untrained models: the exporter's own parity figures, and an independent check of
ONNX Runtime against torch on shapes the exporter did not use."""

from __future__ import annotations

import dataclasses
import numpy as np
import onnx
import pytest
import torch

from data.simulator import SimConfig, simulate
from exporters.onnx_export import PARITY_TOLERANCE, export_grace, export_ranker, sample_encoder_inputs
from serving.ort import session
from models.grace.model import GraceConfig, GraceModel
from models.ranking.model import Ranker, RankerConfig
from serving.grace.retriever import LEVEL_TOKENS
from serving.grace.tokenizer import BOS

GRACE_CFG = GraceConfig(vocab_size=50, max_tokens=60, d_model=16, num_heads=2)
MAX_HISTORY, NUM_CANDIDATES = 6, 9


# The served default uses journey-aware sparse attention; small blocks so that 60 tokens are really sparse.
JSA_CFG = dataclasses.replace(GRACE_CFG, attention="jsa", jsa={"block": 16, "compress_block": 16,
                                                                "compress_stride": 16, "window": 16, "top_n": 1})


def _small_tokenizer(rng: np.random.Generator, n: int):
    """A random CoT tokenizer of n items (6 leaves under 2 top categories, 4 brands, 3 price buckets) that fits
    the exported test model's vocabulary."""
    from serving.grace.tokenizer import ItemTokenizer

    leaf = np.r_[0, rng.integers(0, 6, size=n)]
    return ItemTokenizer.from_catalog(leaf // 3, leaf, np.r_[0, rng.integers(0, 4, size=n)],
                                      np.r_[0, rng.integers(0, 3, size=n)])


# The level-restricted decoder step (it scores only the tokens of the level it decodes) needs the tokenizer's
# level offsets in the model; every small tokenizer here has the same ones (each attribute value occurs).
LEVELS = tuple(int(o) for o in _small_tokenizer(np.random.default_rng(0), 40).level_offsets)
GRACE_CFGS = {"dense": GRACE_CFG, "jsa": JSA_CFG, "events": dataclasses.replace(GRACE_CFG, event_memory=True),
              "copy": dataclasses.replace(GRACE_CFG, event_memory=True, copy=True),
              "levels": dataclasses.replace(GRACE_CFG, event_memory=True, level_offsets=LEVELS),
              "levels_copy": dataclasses.replace(GRACE_CFG, event_memory=True, copy=True, level_offsets=LEVELS),
              "levels_tied": dataclasses.replace(GRACE_CFG, event_memory=True, level_offsets=LEVELS, tied_head=True),
              "jsa_events": dataclasses.replace(JSA_CFG, event_memory=True, jsa={**JSA_CFG.jsa, "block": 4,
                                                                                  "compress_block": 4,
                                                                                  "compress_stride": 4, "window": 4})}


@pytest.fixture(scope="module", params=sorted(GRACE_CFGS))
def grace_export(tmp_path_factory, request):
    torch.manual_seed(0)
    model = GraceModel(GRACE_CFGS[request.param]).eval()
    if model.cfg.copy:  # zero at initialisation: random here, so that the exported recency is exercised
        torch.nn.init.normal_(model.copy_recency.weight, std=2.0)
    out = tmp_path_factory.mktemp("grace")
    parity = export_grace(model, out, seed=0)
    return model, out, parity


@pytest.fixture(scope="module")
def ranker_export(tmp_path_factory):
    sim = SimConfig(num_items=60, num_users=10, num_campaigns=10)
    cat = simulate(sim).catalog
    torch.manual_seed(0)
    model = Ranker(RankerConfig(num_items=cat.num_items, num_leaf_categories=sim.num_leaf_categories,
                                num_brands=sim.num_brands, num_price_buckets=sim.num_price_buckets,
                                d_model=8, hidden=16, max_history=MAX_HISTORY),
                   cat.leaf_category, cat.brand, cat.price_bucket).eval()
    out = tmp_path_factory.mktemp("ranker")
    parity = export_ranker(model, out, MAX_HISTORY, NUM_CANDIDATES, seed=0)
    return model, out, parity


def test_export_grace_parity_figures(grace_export):
    _, out, parity = grace_export
    assert set(parity) == {"grace_encoder.onnx", "grace_decoder_step.onnx"}
    for name, diff in parity.items():
        assert (out / name).is_file()
        assert 0.0 <= diff <= PARITY_TOLERANCE, (name, diff)


@pytest.mark.parametrize("path_length", [1, 2, 4])
def test_export_of_a_short_item_path(tmp_path, path_length):
    """A path of few tokens (semantic IDs alone, grace_nocot): the exporter checks only caches it can hold."""
    torch.manual_seed(0)
    model = GraceModel(dataclasses.replace(GRACE_CFG, path_length=path_length, tokens_per_event=path_length + 1,
                                           event_memory=True, copy=True)).eval()
    parity = export_grace(model, tmp_path, seed=0)
    assert max(parity.values()) <= PARITY_TOLERANCE, parity


def test_the_exported_grace_encoder_softmaxes_are_floored(grace_export):
    """exporters.onnx_softmax's pass is in the served encoder (every Softmax reads a Max, its floored input), not
    in the decoder step, whose attention is hardly masked."""
    _, out, _ = grace_export
    for name, floored in (("grace_encoder.onnx", True), ("grace_decoder_step.onnx", False)):
        nodes = onnx.load(str(out / name)).graph.node
        producer = {o: n.op_type for n in nodes for o in n.output}
        softmax_inputs = [n.input[0] for n in nodes if n.op_type == "Softmax"]
        assert softmax_inputs and all((producer.get(i) == "Max") == floored for i in softmax_inputs), name


def test_export_with_item_buckets(tmp_path):
    """The hashed item embedding is computed in the encoder graph from the tokens: ORT == torch, and the bucket
    vectors reach the output."""
    from exporters.onnx_export import _Encoder, _max_diff

    torch.manual_seed(0)
    model = GraceModel(dataclasses.replace(GRACE_CFG, event_memory=True, item_buckets=64)).eval()
    assert max(export_grace(model, tmp_path, seed=0).values()) <= PARITY_TOLERANCE
    feeds = sample_encoder_inputs(np.random.default_rng(5), GRACE_CFG.vocab_size, GRACE_CFG.tokens_per_event, [7, 2])
    assert _max_diff(_Encoder(model), tmp_path / "grace_encoder.onnx", feeds) < PARITY_TOLERANCE
    with torch.no_grad():
        torch.nn.init.normal_(model.item_bucket_emb.weight, std=1.0)
    assert _max_diff(_Encoder(model), tmp_path / "grace_encoder.onnx", feeds) > 1e-3


def test_export_ranker_parity_figures(ranker_export):
    _, out, parity = ranker_export
    assert set(parity) == {"ranker.onnx"}
    assert (out / "ranker.onnx").is_file()
    assert 0.0 <= parity["ranker.onnx"] <= PARITY_TOLERANCE


def _encoder_inputs(events_per_row: list[int], seed: int) -> dict[str, np.ndarray]:
    return sample_encoder_inputs(np.random.default_rng(seed), GRACE_CFG.vocab_size, GRACE_CFG.tokens_per_event,
                                 events_per_row)


def _torch(feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


@pytest.mark.parametrize("events_per_row", [[1], [3, 1, 2, 3], [10, 10], [2] * 6])
def test_grace_encoder_matches_torch_on_new_shapes(grace_export, events_per_row):
    model, out, _ = grace_export
    feeds = _encoder_inputs(events_per_row, sum(events_per_row))
    got = session(out / "grace_encoder.onnx").run(None, feeds)[0]
    with torch.no_grad():
        expected = model.cross_kv(model.encode(**_torch(feeds))).numpy()
    assert got.shape == expected.shape == (GRACE_CFG.decoder_layers, 2, len(events_per_row), GRACE_CFG.num_heads,
                                           model.memory_length(feeds["tokens"].shape[1]),
                                           GRACE_CFG.d_model // GRACE_CFG.num_heads)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=PARITY_TOLERANCE, rtol=0)


def _paths(model, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The decoder step's memory_paths input for a model with the copy path (else none). With level offsets the
    random history tokens are moved into their level's range, as a real item path's are."""
    if not model.cfg.copy:
        return {}
    paths = model.memory_paths(torch.from_numpy(tokens)).numpy()
    off = model.cfg.level_offsets
    if off is not None:
        start, size = np.asarray(off[:-1]), np.diff(off)
        paths = np.where((paths >= start) & (paths < start + size), paths, start + paths % size)
    return {"memory_paths": paths}


def _level(model, past_len: int) -> dict[str, np.ndarray]:
    """The level_tokens input of a level-restricted decoder step decoding path level past_len (else none)."""
    off = model.cfg.level_offsets
    return {} if off is None else {LEVEL_TOKENS: np.arange(off[past_len], off[past_len + 1], dtype=np.int64)}


def _columns(model, past_len: int) -> np.ndarray:
    """The vocabulary's tokens that the step's log_probs columns are."""
    return _level(model, past_len).get(LEVEL_TOKENS, np.arange(model.cfg.vocab_size))


def _decode_step(model, feeds: dict[str, np.ndarray]):
    t = _torch(feeds)
    return model.decode_step(t["last_tokens"], t["past_kv"], t["cross_kv"], t["memory_valid"], t.get("memory_paths"),
                             t.get(LEVEL_TOKENS))


def _encode_one(out, events: int, seed: int):
    feeds = _encoder_inputs([events], seed)
    cross_kv = session(out / "grace_encoder.onnx").run(None, feeds)[0]
    return feeds, cross_kv


@pytest.mark.parametrize("beams, past_len, events", [(1, 0, 2), (7, 0, 5), (2, 4, 1), (11, 2, 8), (4, 3, 3)])
def test_grace_decoder_step_matches_torch_on_new_shapes(grace_export, beams, past_len, events):
    """As served: one request's encoder output (batch 1) shared by every beam, plus each beam's KV cache."""
    model, out, _ = grace_export
    rng = np.random.default_rng(beams * 100 + past_len)
    feeds, cross_kv = _encode_one(out, events, beams)
    heads, hd = GRACE_CFG.num_heads, GRACE_CFG.d_model // GRACE_CFG.num_heads
    step_feeds = {"last_tokens": rng.integers(2, GRACE_CFG.vocab_size, size=beams).astype(np.int64),
                  "past_kv": rng.normal(size=(GRACE_CFG.decoder_layers, 2, beams, heads, past_len, hd)).astype(np.float32),
                  "cross_kv": cross_kv, "memory_valid": feeds["valid"], **_paths(model, feeds["tokens"]),
                  **_level(model, past_len)}
    got_lp, got_present = session(out / "grace_decoder_step.onnx").run(None, step_feeds)
    with torch.no_grad():
        lp, present = _decode_step(model, step_feeds)
    assert got_lp.shape == lp.shape == (beams, len(_columns(model, past_len)))
    assert got_present.shape == present.shape == (GRACE_CFG.decoder_layers, 2, beams, heads, past_len + 1, hd)
    np.testing.assert_allclose(got_lp, lp.numpy(), atol=PARITY_TOLERANCE, rtol=0)
    np.testing.assert_allclose(got_present, present.numpy(), atol=PARITY_TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.exp(got_lp).sum(-1), 1.0, atol=1e-4)  # log-probabilities


def test_kv_cached_decoding_equals_full_prefix_decoding(grace_export):
    """Feeding a path token by token through the cache gives the same next-token distributions as decoding
    the whole prefix at once (teacher forcing), in ORT as in torch."""
    model, out, _ = grace_export
    rng = np.random.default_rng(3)
    feeds, cross_kv = _encode_one(out, 4, 3)
    prefix = np.concatenate([np.full((3, 1), BOS), rng.integers(2, GRACE_CFG.vocab_size, size=(3, 4))], 1)
    with torch.no_grad():
        paths = _paths(model, feeds["tokens"])
        full = model.decode(torch.from_numpy(prefix), torch.from_numpy(cross_kv), torch.from_numpy(feeds["valid"]),
                            *(torch.from_numpy(v) for v in paths.values())).log_softmax(-1).numpy()
    step = session(out / "grace_decoder_step.onnx")
    past = model.empty_cache(3).numpy()
    for s in range(prefix.shape[1]):
        lp, past = step.run(None, {"last_tokens": prefix[:, s].astype(np.int64), "past_kv": past,
                                   "cross_kv": cross_kv, "memory_valid": feeds["valid"], **paths, **_level(model, s)})
        # a level-restricted step: the full decoder's distribution over that level's tokens (the rest is 0)
        np.testing.assert_allclose(lp, full[:, s, _columns(model, s)], atol=PARITY_TOLERANCE, rtol=0)


def test_grace_decoder_step_respects_memory_mask(grace_export):
    """Masked memory positions must not influence the output, in ORT as in torch."""
    model, out, _ = grace_export
    rng = np.random.default_rng(5)
    tpe = GRACE_CFG.tokens_per_event
    t = 4 * tpe
    heads, hd = GRACE_CFG.num_heads, GRACE_CFG.d_model // GRACE_CFG.num_heads
    m, masked = model.memory_length(t), model.memory_length(tpe)  # memory positions: all, of the first event
    cross_kv = rng.normal(size=(GRACE_CFG.decoder_layers, 2, 1, heads, m, hd)).astype(np.float32)
    valid = np.ones((1, t), np.float32)
    valid[0, :tpe] = 0.0
    other = cross_kv.copy()
    other[..., :masked, :] = rng.normal(size=other[..., :masked, :].shape) * 10
    past = rng.normal(size=(GRACE_CFG.decoder_layers, 2, 2, heads, 2, hd)).astype(np.float32)
    last = np.array([7, 3], np.int64)
    step = session(out / "grace_decoder_step.onnx")
    tokens = rng.integers(2, GRACE_CFG.vocab_size, size=(1, t))
    other_tokens = tokens.copy()
    other_tokens[0, :tpe] = rng.integers(2, GRACE_CFG.vocab_size, size=tpe)  # the masked event's copy candidates
    a = step.run(None, {"last_tokens": last, "past_kv": past, "cross_kv": cross_kv, "memory_valid": valid,
                        **_paths(model, tokens), **_level(model, 2)})[0]
    b = step.run(None, {"last_tokens": last, "past_kv": past, "cross_kv": other, "memory_valid": valid,
                        **_paths(model, other_tokens), **_level(model, 2)})[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def _ranker_inputs(rng, n_items, batch, history_lengths, padded_candidates):
    hist = np.zeros((batch, MAX_HISTORY), np.int64)
    for r, n in enumerate(history_lengths):
        if n:
            hist[r, -n:] = rng.integers(1, n_items + 1, size=n)
    behs = np.where(hist > 0, rng.integers(1, 5, size=hist.shape), 0).astype(np.int64)
    cand = rng.integers(1, n_items + 1, size=(batch, NUM_CANDIDATES)).astype(np.int64)
    if padded_candidates:
        cand[:, -padded_candidates:] = 0
    return hist, behs, cand


@pytest.mark.parametrize("history_lengths, padded",
                         [([6], 0), ([0, 1, 6], 4), ([3] * 8, 1), ([2, 5, 0, 6, 1, 4, 3], 9)])
def test_ranker_matches_torch_on_new_shapes(ranker_export, history_lengths, padded):
    model, out, _ = ranker_export
    rng = np.random.default_rng(len(history_lengths) * 10 + padded)
    hist, behs, cand = _ranker_inputs(rng, model.cfg.num_items, len(history_lengths), history_lengths, padded)
    feeds = {"hist_items": hist, "hist_behaviors": behs, "cand_items": cand}
    with torch.no_grad():
        expected = model(torch.from_numpy(hist), torch.from_numpy(behs), torch.from_numpy(cand))
    for got, want in zip(session(out / "ranker.onnx").run(None, feeds), expected):  # ctr logits, relevance
        assert got.shape == want.shape == (len(history_lengths), NUM_CANDIDATES)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want.numpy(), atol=PARITY_TOLERANCE, rtol=0)


def test_the_served_ranker_sends_real_columns_only_and_scores_as_over_the_full_window(ranker_export, monkeypatch):
    """A ranker trained on windows of MAX_HISTORY events counts recency in those units, so its export takes any
    length and the server drops the columns that are padding in every row: the same scores as the torch model
    over the padded window, repeats (the recency feature) included."""
    from serving.ranking import OnnxRanker

    model, out, _ = ranker_export
    rng = np.random.default_rng(3)
    hist, behs, cand = _ranker_inputs(rng, model.cfg.num_items, 3, [2, 5, 1], 2)
    cand[1, :2] = hist[1, -5], hist[1, -1]  # an old and the newest event as candidates
    ranker = OnnxRanker(out)
    assert ranker.fixed_width is None
    sent = []
    run = ranker.session.run
    monkeypatch.setattr(ranker.session, "run", lambda names, feeds: sent.append(feeds) or run(names, feeds))
    with torch.no_grad():
        expected = model(torch.from_numpy(hist), torch.from_numpy(behs), torch.from_numpy(cand))
    for got, want in zip(ranker(hist, behs, cand), expected):
        np.testing.assert_allclose(got, want.numpy(), atol=PARITY_TOLERANCE, rtol=0)
    assert sent[-1]["hist_items"].shape == (3, 5) and sent[-1]["hist_behaviors"].shape == (3, 5)


def test_a_ranker_counting_recency_in_its_input_width_keeps_a_fixed_width(tmp_path):
    """Checkpoints from before RankerConfig.max_history (0): recency depends on the width, so the export fixes
    it and the server sends the full window."""
    from serving.ranking import OnnxRanker

    sim = SimConfig(num_items=30, num_users=5, num_campaigns=5)
    cat = simulate(sim).catalog
    model = Ranker(RankerConfig(num_items=cat.num_items, num_leaf_categories=sim.num_leaf_categories,
                                num_brands=sim.num_brands, num_price_buckets=sim.num_price_buckets, d_model=8,
                                hidden=16), cat.leaf_category, cat.brand, cat.price_bucket).eval()
    export_ranker(model, tmp_path, MAX_HISTORY, NUM_CANDIDATES, seed=0)
    assert OnnxRanker(tmp_path).fixed_width == MAX_HISTORY


def test_ranker_rows_are_independent_in_onnx(ranker_export):
    """Batching (Triton's dynamic batcher) must not change a request's scores."""
    model, out, _ = ranker_export
    rng = np.random.default_rng(9)
    hist, behs, cand = _ranker_inputs(rng, model.cfg.num_items, 5, [1, 2, 3, 4, 6], 2)
    sess = session(out / "ranker.onnx")
    batched = sess.run(None, {"hist_items": hist, "hist_behaviors": behs, "cand_items": cand})[0]
    for r in range(5):
        single = sess.run(None, {"hist_items": hist[r:r + 1], "hist_behaviors": behs[r:r + 1],
                                 "cand_items": cand[r:r + 1]})[0]
        np.testing.assert_allclose(single[0], batched[r], atol=1e-5)


def test_beam_search_with_onnx_step_matches_torch_reference(grace_export):
    """The served retrieval path (ORT encoder + cached ORT step inside the shared beam search) returns the same
    items as the in-process torch reference."""
    from serving.grace.beam_search import CachedStep, constrained_beam_search
    from models.grace.recommender import grace_retrieve

    model, out, _ = grace_export
    rng = np.random.default_rng(11)
    n = 40
    tok = _small_tokenizer(np.random.default_rng(0), n)  # the tokenizer whose level offsets the models have
    assert tok.vocab_size <= GRACE_CFG.vocab_size and tok.path_length == GRACE_CFG.path_length
    trie, p2i = tok.build_trie(), tok.path_to_item()
    enc = tok.event_tokens(rng.integers(1, n + 1, size=4), rng.integers(1, 5, size=4))
    journey_ids = np.repeat(np.array([0, 0, 1, 2]), tok.tokens_per_event)
    journey_pos = np.arange(len(enc)) - np.searchsorted(journey_ids, journey_ids)
    feeds = {"tokens": enc[None], "valid": np.ones((1, len(enc)), np.float32), "journey_ids": journey_ids[None],
             "journey_pos": journey_pos[None]}
    cross_kv = session(out / "grace_encoder.onnx").run(None, feeds)[0]
    step_sess = session(out / "grace_decoder_step.onnx")

    def run(last_tokens, past):
        lp, present = step_sess.run(None, {"last_tokens": last_tokens, "past_kv": past, "cross_kv": cross_kv,
                                           "memory_valid": feeds["valid"], **_paths(model, feeds["tokens"]),
                                           **_level(model, past.shape[4])})
        full = np.full((len(lp), GRACE_CFG.vocab_size), -np.inf, np.float32)  # the one-request search reads [W, V]
        full[:, _columns(model, past.shape[4])] = lp
        return full, present

    for width in (1, 6):
        items, scores = constrained_beam_search(CachedStep(run, model.empty_cache(1).numpy()), trie, p2i, width)
        ref_items, ref_scores = grace_retrieve(model, trie, p2i, enc, journey_ids, journey_pos, width)
        np.testing.assert_array_equal(items, ref_items)
        np.testing.assert_allclose(scores, ref_scores, atol=5 * PARITY_TOLERANCE)
        assert len(items) == width


def test_batched_served_retrieval_equals_the_torch_reference_per_request(grace_export):
    """Several requests of different lengths in one encoder call (left-padded) and one decoder call per step, with
    exclusions: each request gets the items the torch reference finds for it alone."""
    from models.grace.recommender import grace_retrieve
    from serving.grace.history import TOKENIZER_FILE
    from serving.grace.retriever import OnnxGraceRetriever

    model, out, _ = grace_export
    rng = np.random.default_rng(12)
    n = 40
    tok = _small_tokenizer(np.random.default_rng(0), n)  # the tokenizer whose level offsets the models have
    tok.save(out / TOKENIZER_FILE)
    retriever = OnnxGraceRetriever(out)
    assert retriever.batched
    # a model with level offsets is served level-restricted, with its tokenizer's (the same) offsets
    assert (retriever.level_offsets is not None) == (model.cfg.level_offsets is not None)
    if model.cfg.level_offsets is not None:
        assert tuple(retriever.level_offsets) == model.cfg.level_offsets
    requests = []
    for events, exclude in ((4, None), (1, {3, 5}), (6, set(range(1, 30))), (2, set())):
        enc = tok.event_tokens(rng.integers(1, n + 1, size=events), rng.integers(1, 5, size=events))
        journey_ids = np.repeat(np.sort(rng.integers(0, 2, size=events)).cumsum(), tok.tokens_per_event)
        journey_ids -= journey_ids[0]
        journey_pos = np.arange(len(enc)) - np.searchsorted(journey_ids, journey_ids)
        requests.append((enc, journey_ids, journey_pos, exclude))
    for width in (1, 6):
        for (items, scores), (enc, jid, jpos, exclude) in zip(retriever.batch(requests, width), requests):
            ref_items, ref_scores = grace_retrieve(model, retriever.trie, retriever.path_to_item, enc, jid, jpos,
                                                   width, exclude)
            np.testing.assert_array_equal(items, ref_items)
            np.testing.assert_allclose(scores, ref_scores, atol=5 * PARITY_TOLERANCE)


def _served_grace(out, tmp_path, n: int):
    """A copy of the exported GRACE folder with a small tokenizer of n items: (folder, tokenizer)."""
    import shutil

    from serving.grace.history import TOKENIZER_FILE

    served = tmp_path / "grace"
    shutil.copytree(out, served)
    tok = _small_tokenizer(np.random.default_rng(0), n)
    tok.save(served / TOKENIZER_FILE)
    return served, tok


def _grace_requests(tok, rng, n: int, spec) -> list:
    """(tokens, journey ids, journey positions, excluded items) per (events, exclude) of spec: one journey each."""
    requests = []
    for events, exclude in spec:
        enc = tok.event_tokens(rng.integers(1, n + 1, size=events), rng.integers(1, 5, size=events))
        requests.append((enc, np.zeros(len(enc), np.int64), np.arange(len(enc)), exclude))
    return requests


def test_served_retrieval_with_a_popularity_prior_equals_the_torch_reference(grace_export, tmp_path):
    """A build that chose a popularity prior writes its item weights and weight beside the decoding settings;
    the served search (a bias per trie edge of the batched search) finds what the torch reference
    finds with the same prior, and the prior changes the answer."""
    from models.grace.recommender import grace_retrieve
    from serving.grace.beam_search import PriorStep, prefix_log_mass
    from serving.grace.retriever import PRIOR_FILE, OnnxGraceRetriever, load_prior, save_decoding

    model, out, _ = grace_export
    n = 40
    served, tok = _served_grace(out, tmp_path, n)
    weights = np.random.default_rng(3).integers(1, 100, n + 1).astype(np.float64)
    save_decoding(served, False, weights, 0.0)  # weight 0: no prior written
    assert load_prior(served) is None and not (served / PRIOR_FILE).exists()
    save_decoding(served, False, weights, 2.0)
    stored, weight = load_prior(served)
    np.testing.assert_array_equal(stored, weights)
    assert weight == 2.0
    retriever = OnnxGraceRetriever(served)
    prior = PriorStep(None, retriever.trie, prefix_log_mass(retriever.path_to_item, weights), 2.0)
    requests = _grace_requests(tok, np.random.default_rng(5), n, ((4, None), (2, {3, 5})))
    changed = False
    for (items, scores), (enc, jid, jpos, exclude) in zip(retriever.batch(requests, 6), requests):
        ref_items, ref_scores = grace_retrieve(model, retriever.trie, retriever.path_to_item, enc, jid, jpos, 6,
                                               exclude, prior=prior)
        np.testing.assert_array_equal(items, ref_items)
        np.testing.assert_allclose(scores, ref_scores, atol=5 * PARITY_TOLERANCE)
        plain, _ = grace_retrieve(model, retriever.trie, retriever.path_to_item, enc, jid, jpos, 6, exclude)
        changed |= not np.array_equal(plain, ref_items)
    assert changed


@pytest.mark.parametrize("trie_normalized", [False, True])
def test_served_prior_candidates_equal_the_torch_reference(grace_export, tmp_path, trie_normalized):
    """With popularity_prior_candidates the build lists the prior's top items; the served retriever scores the
    union of each request's beam items and those (teacher-forced decoder steps, score_paths) as the torch
    reference does (grace_retrieve with prior_top), exclusions honoured, and the candidates change the answer."""
    from models.grace.recommender import grace_retrieve, prior_candidates, trie_allowed_tokens
    from serving.grace.beam_search import PriorStep, prefix_log_mass, top_prior_items
    from serving.grace.retriever import OnnxGraceRetriever, load_prior_candidates, save_decoding

    model, out, _ = grace_export
    n = 40
    served, tok = _served_grace(out, tmp_path, n)
    weights = np.random.default_rng(4).integers(1, 100, n + 1).astype(np.float64)
    weight, beam = 8.0, 4
    top = top_prior_items(weights, tok.path_to_item(), 6)
    save_decoding(served, trie_normalized, weights, weight, top)
    np.testing.assert_array_equal(load_prior_candidates(served), top)
    retriever = OnnxGraceRetriever(served)
    prior = PriorStep(None, retriever.trie, prefix_log_mass(retriever.path_to_item, weights), weight)
    joined = prior_candidates(top, weights, retriever.path_to_item, weight, tok.item_paths)
    allowed = trie_allowed_tokens(tok.item_paths, model.cfg.vocab_size) if trie_normalized else None
    requests = _grace_requests(tok, np.random.default_rng(6), n,
                               ((4, None), (2, {int(top[0]), int(top[2])}), (3, None)))
    changed = False
    for (items, scores), (enc, jid, jpos, exclude) in zip(retriever.batch(requests, beam), requests):
        ref_items, ref_scores = grace_retrieve(model, retriever.trie, retriever.path_to_item, enc, jid, jpos, beam,
                                               exclude, trie_normalized, allowed=allowed, prior=prior,
                                               prior_top=joined)
        np.testing.assert_array_equal(items, ref_items)
        np.testing.assert_allclose(scores, ref_scores, atol=5 * PARITY_TOLERANCE)
        assert not exclude or not set(items.tolist()) & exclude
        beam_only, _ = grace_retrieve(model, retriever.trie, retriever.path_to_item, enc, jid, jpos, beam, exclude,
                                      trie_normalized, prior=prior)
        changed |= not np.array_equal(beam_only, ref_items)
    assert changed


def test_a_jsa_encoder_export_serves_its_longest_history(tmp_path):
    """The encoder is traced on short histories (one or two JSA blocks); the exported graph must still serve
    the longest history the model takes (many blocks). A 256-event build once shipped an encoder whose shape
    folding held for one block only (ONNX Runtime: Gather index out of range past 64 events): export_grace now
    checks parity at the model's longest history too, and keeps an export that passes."""
    from exporters.onnx_export import _Encoder, _max_diff

    # JSA's default geometry (blocks of 64 events) over up to 256 events, as that build had.
    cfg = dataclasses.replace(GRACE_CFG, attention="jsa", jsa=None, event_memory=True, level_offsets=LEVELS,
                              max_tokens=256 * GRACE_CFG.tokens_per_event)
    torch.manual_seed(0)
    model = GraceModel(cfg).eval()
    export_grace(model, tmp_path, seed=0)
    rng = np.random.default_rng(3)
    for events in ([256, 70], [129], [5, 2]):
        feeds = sample_encoder_inputs(rng, cfg.vocab_size, cfg.tokens_per_event, events)
        assert _max_diff(_Encoder(model), tmp_path / "grace_encoder.onnx", feeds) < PARITY_TOLERANCE


def test_a_ranker_attending_to_a_window_exports_at_every_width(tmp_path):
    """RankerConfig.attention_window: the exported graph slices the newest events as torch does, at widths below
    the window (all of them) and above it."""
    sim = SimConfig(num_items=30, num_users=5, num_campaigns=5)
    cat = simulate(sim).catalog
    torch.manual_seed(0)
    max_history, window = 12, 4
    model = Ranker(RankerConfig(num_items=cat.num_items, num_leaf_categories=sim.num_leaf_categories,
                                num_brands=sim.num_brands, num_price_buckets=sim.num_price_buckets, d_model=8,
                                hidden=16, max_history=max_history, attention_window=window),
                   cat.leaf_category, cat.brand, cat.price_bucket).eval()
    parity = export_ranker(model, tmp_path, max_history, NUM_CANDIDATES, seed=0)
    assert parity["ranker.onnx"] <= PARITY_TOLERANCE
    sess = session(tmp_path / "ranker.onnx")
    rng = np.random.default_rng(3)
    for width in (2, window, 9, max_history):
        hist = rng.integers(1, cat.num_items + 1, size=(3, width)).astype(np.int64)
        hist[1, : width // 2] = 0
        behs = np.where(hist > 0, 1, 0).astype(np.int64)
        cand = rng.integers(1, cat.num_items + 1, size=(3, NUM_CANDIDATES)).astype(np.int64)
        got = sess.run(None, {"hist_items": hist, "hist_behaviors": behs, "cand_items": cand})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(hist), torch.from_numpy(behs), torch.from_numpy(cand))[0].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"width {width}")
