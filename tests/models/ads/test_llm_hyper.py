"""LLM-HYPER generation: retrieval, the default generator, normalisation, intercept calibration, prompt,
the LLM path through a real local OpenAI-compatible server, and leave-one-out selection."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from data.campaigns import build_campaigns
from data.simulator import SimConfig, simulate
from models.ads import llm_hyper as lh
from serving.ads.features import FEATURE_NAMES
from models.ads.llm_client import ChatClient


@pytest.fixture(scope="module")
def prep():
    world = simulate(SimConfig(seed=5, num_items=300, num_users=200, num_campaigns=40))
    cs = build_campaigns(world, seed=5, impressions=(150, 80, 80))
    return lh.prepare(world, cs, reference_pool=2000)


@pytest.fixture(scope="module")
def emb(prep):
    return lh.creative_embeddings(prep.world, prep.campaigns, "attributes")[0]


def test_nearest_warm_matches_brute_force():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(30, 8))
    warm, query = np.arange(0, 30, 2), np.array([1, 7, 13])
    ids, sims = lh.nearest_warm(e, query, warm, 4)
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    for q, c in enumerate(query):
        s = en[warm] @ en[c]
        np.testing.assert_array_equal(ids[q], warm[np.argsort(-s)[:4]])
        np.testing.assert_allclose(sims[q], np.sort(s)[::-1][:4])

    class Index:  # the faiss-style hook: .search(queries, k) -> (scores, positions into warm)
        def search(self, q, k):
            s = q @ en[warm].T.astype(np.float32)
            pos = np.argsort(-s, 1)[:, :k]
            return np.take_along_axis(s, pos, 1), pos

    ids2, sims2 = lh.nearest_warm(e, query, warm, 4, index=Index())
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_allclose(sims2, sims, atol=1e-5)
    with pytest.raises(ValueError, match="k must be in"):
        lh.nearest_warm(e, query, warm, 16)
    with pytest.raises(ValueError, match="embeddings must be"):
        lh.nearest_warm(e[:10], query, warm, 2)


def test_combination_and_normalisation():
    nb_w = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    sims = np.array([[0.9, 0.1]])
    w = lh.combine_neighbours(nb_w, sims, temperature=0.1)
    a = np.exp(8.0)
    np.testing.assert_allclose(w, [[a / (a + 1), 1 / (a + 1)]])
    warm_w = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = lh.normalise_weights(np.array([[5.0, -3.0]]), nb_w, sims, warm_w, 0.1)
    # Rescaled to the neighbours' weighted norm (1), then clipped to the warm range [0, 1] per feature.
    np.testing.assert_allclose(out, [[5 / 34 ** 0.5, 0.0]])
    with pytest.raises(ValueError, match="temperature"):
        lh.similarity_weights(sims, 0.0)


def test_calibrate_intercepts_hits_target():
    rng = np.random.default_rng(1)
    scores = rng.normal(0, 1, size=(3, 500))
    target = np.array([0.02, 0.2, 0.6])
    b = lh.calibrate_intercepts(scores, target)
    np.testing.assert_allclose((1 / (1 + np.exp(-(b[:, None] + scores)))).mean(1), target, atol=1e-6)


def test_prompt_shape():
    nbs = [{"text": f"ad {i}", "audience": "categories tops", "similarity": 0.9 - i / 10, "ctr": 0.05,
            "weights": np.arange(len(FEATURE_NAMES)) / 10} for i in range(3)]
    msgs = lh.build_prompt({"text": "NEW AD", "audience": "categories bags"}, nbs)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert all(n in user for n in FEATURE_NAMES)
    assert user.count("Example ") == 3 and "NEW AD" in user and "Answer with JSON only" in user
    shot = user.split("Weights: ")[1].split("\n")[0]
    assert json.loads(shot)["weights"]["top_affinity"] == 0.1


def test_generate_cold_retrieval(prep, emb):
    cs = prep.campaigns
    m = lh.generate_cold(prep, emb, k=3, temperature=0.1)
    assert (m.source[cs.warm_ids] == lh.WARM).all() and (m.source[cs.cold_ids] == lh.HYPER).all()
    np.testing.assert_allclose(m.weights[cs.warm_ids], prep.warm_w)
    for c in cs.cold_ids:
        assert set(m.neighbours[c]) <= set(cs.warm_ids.tolist()) and len(m.neighbours[c]) == 3
    w = m.weights[cs.cold_ids]
    assert np.isfinite(w).all() and (w >= prep.warm_w.min(0) - 1e-9).all() and (w <= prep.warm_w.max(0) + 1e-9).all()
    # Intercepts put the predicted CTR level in the warm campaigns' range.
    ref = lh.reference_features(prep, cs.cold_ids)
    level = lh._sigmoid(np.einsum("qrf,qf->qr", ref, w) + m.bias[cs.cold_ids][:, None]).mean(1)
    assert prep.warm_ctr.min() / 2 < level.min() and level.max() < 2 * prep.warm_ctr.max()
    g = lh.generate_cold(prep, emb, k=3, temperature=0.1, intercept_target="global")
    level = lh._sigmoid(np.einsum("qrf,qf->qr", ref, g.weights[cs.cold_ids]) + g.bias[cs.cold_ids][:, None]).mean(1)
    np.testing.assert_allclose(level, np.median(prep.warm_ctr), atol=1e-6)
    with pytest.raises(ValueError, match="intercept_target"):
        lh.generate_cold(prep, emb, intercept_target="bogus")


class _LLM:
    """A local OpenAI-compatible server: fixed weights, or garbage for the campaigns listed in `bad`."""

    def __init__(self, weights, bad_every: int = 0):
        self.calls = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls += 1
                outer.last_prompt = body["messages"][1]["content"]
                bad = bad_every and outer.calls % bad_every == 0
                content = "I cannot help" if bad else json.dumps({"weights": dict(zip(FEATURE_NAMES, weights))})
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_generate_cold_llm_path(prep, emb):
    cs = prep.campaigns
    llm_w = np.linspace(-0.5, 0.5, len(FEATURE_NAMES))
    server = _LLM(llm_w, bad_every=3)
    try:
        m = lh.generate_cold(prep, emb, k=3, temperature=0.1, client=ChatClient(server.url, "test-model"))
    finally:
        server.close()
    cold = cs.cold_ids
    assert server.calls == len(cold)
    assert "Example 3" in server.last_prompt
    failed = np.array([c in m.llm_failures for c in cold])
    assert failed.sum() == len(cold) // 3 and all("no JSON object" in e for e in m.llm_failures.values())
    assert (m.source[cold[failed]] == lh.HYPER).all() and (m.source[cold[~failed]] == lh.LLM).all()
    # LLM weights went through the same normalisation: one positive rescale, then clipped to the warm range.
    w = m.weights[cold[~failed]]
    lo, hi = prep.warm_w.min(0), prep.warm_w.max(0)
    assert (w >= lo - 1e-9).all() and (w <= hi + 1e-9).all()
    for row in w:
        inside = (row > lo + 1e-9) & (row < hi - 1e-9) & (llm_w != 0)
        assert inside.sum() >= 2
        ratio = row[inside] / llm_w[inside]
        assert ratio.min() > 0 and np.allclose(ratio, ratio[0])


def test_select_hyperparameters_uses_warm_only(prep, emb):
    k, t, scores = lh.select_hyperparameters(prep, emb, ks=(2, 4), temperatures=(0.05, 0.5))
    assert (k, t) in {(2, 0.05), (2, 0.5), (4, 0.05), (4, 0.5)}
    assert len(scores) == 4 and scores[f"k={k},T={t}"] == max(scores.values())
    assert all(0.3 < v < 1.0 for v in scores.values())


def test_train_campaign_lr_rejects_thin_logs():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="needs >= 20 logs"):
        lh.train_campaign_lr(x, np.zeros(10, int), np.zeros(10, int), np.array([0]))


def test_calibrator_choice():
    rng = np.random.default_rng(2)
    z = rng.normal(-1, 1, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-z))).astype(int)
    assert lh.fit_calibrator(z, y)["kind"] == "isotonic"
    thin = lh.fit_calibrator(z[:300], y[:300])
    assert thin["kind"] == "platt" and 0.5 < thin["a"] < 1.6
    p = lh.apply_calibrator(thin, z[:5])
    assert ((p > 0) & (p < 1)).all()
