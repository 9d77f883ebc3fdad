"""LLM-HYPER generation on a dataset: the time split and warm set, retrieval, the default generator,
normalisation, intercept calibration, prompt, the LLM path through a real local OpenAI-compatible server,
leave-one-out selection, and the cold-start weights against a global-average baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.ads import llm_hyper as lh
from models.ads.logs import CALIB, TEST, TRAIN, split_ad_logs
from serving.ads.features import FEATURE_NAMES
from models.ads.llm_client import ChatClient
from tests.models.ads.chat_endpoint import ChatEndpoint, chat_completion


@pytest.fixture(scope="module")
def prep(ads_data):
    logs = split_ad_logs(ads_data.campaigns, holdout_cold=0.3, seed=5)
    return lh.prepare(ads_data, logs, reference_pool=2000)


@pytest.fixture(scope="module")
def emb(ads_data):
    return lh.creative_embeddings(ads_data, "attributes")[0]


def test_prepare_uses_train_logs_of_warm_campaigns_only(prep, ads_sim_warm):
    cs = prep.campaigns
    # Warm = the simulator's warm campaigns (its cold-start ones launch late: no TRAIN logs) less the 30% held out.
    n_held = round(0.3 * ads_sim_warm.sum())
    assert cs.held_out.sum() == n_held > 0 and not (cs.held_out & ~ads_sim_warm).any()
    np.testing.assert_array_equal(cs.warm, ads_sim_warm & ~cs.held_out)
    assert len(cs.warm_ids) == ads_sim_warm.sum() - n_held and len(cs.cold_ids) == (~ads_sim_warm).sum() + n_held
    assert len(cs.logs(TRAIN, np.flatnonzero(~ads_sim_warm))) == 0
    assert prep.warm_w.shape == (len(cs.warm_ids), len(FEATURE_NAMES))
    assert prep.x.shape == (len(cs.log_click), len(FEATURE_NAMES)) and np.isfinite(prep.x).all()
    # The warm models are exactly the per-campaign LR on TRAIN rows: refitting one reproduces it.
    c = cs.warm_ids[3]
    rows = cs.logs(TRAIN, [c])
    w, b = lh.train_campaign_lr(prep.x[rows], cs.log_click[rows], cs.log_campaign[rows], np.array([c]))
    np.testing.assert_allclose(w[0], prep.warm_w[3])
    np.testing.assert_allclose(prep.warm_ctr[3], cs.log_click[rows].mean())
    assert prep.ref_profiles.top.shape[0] == 2000


def test_prepare_refuses_without_warm_campaigns(ads_data):
    logs = split_ad_logs(ads_data.campaigns, min_train_impressions=10**6)
    with pytest.raises(ValueError, match="no warm campaign"):
        lh.prepare(ads_data, logs)


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


class _LLM(ChatEndpoint):
    """Fixed weights as the answer, or garbage for every `bad_every`-th call."""

    def __init__(self, weights, bad_every: int = 0):
        def answer(request):
            self.last_prompt = request["body"]["messages"][1]["content"]
            bad = bad_every and self.calls % bad_every == 0
            return 200, {}, chat_completion("I cannot help" if bad else
                                            json.dumps({"weights": dict(zip(FEATURE_NAMES, weights))}))

        super().__init__(answer)


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


def test_calibrator_identity_when_too_thin():
    z = np.linspace(-2, 1, 40)
    cal = lh.fit_calibrator(z, (z > 0).astype(int))  # fewer than MIN_PLATT_LOGS
    assert cal["kind"] == "platt" and (cal["a"], cal["b"]) == (1.0, 0.0) and cal["identity"]
    one_label = lh.fit_calibrator(np.zeros(500), np.zeros(500, int))
    assert one_label.get("identity") and lh.fit_calibrator(np.zeros(0), np.zeros(0, int)).get("identity")
    np.testing.assert_allclose(lh.apply_calibrator(cal, z), 1 / (1 + np.exp(-z)))


def test_click_metrics_edge_cases():
    m = lh.click_metrics(np.array([0.2, 0.4]), np.array([0, 0]))
    assert m["auc"] is None and m["logs"] == 2 and m["log_loss"] > 0 and m["ece_15"] == pytest.approx(0.3)
    assert lh.click_metrics(np.zeros(0), np.zeros(0, int))["log_loss"] is None


def test_choose_hyperparameters_clamps_to_the_warm_campaigns(prep, emb):
    n_warm = len(prep.campaigns.warm_ids)
    assert 3 < n_warm < 100 and n_warm < prep.campaigns.num_campaigns
    assert lh.choose_hyperparameters(prep, emb, k=100, temperature=0.1)[:2] == (n_warm, 0.1)
    k, t, loo = lh.choose_hyperparameters(prep, emb, k=3)
    assert k == 3 and t in (0.02, 0.05, 0.1, 0.2) and len(loo) == 4


def test_cold_start_beats_global_average(prep, emb):
    """On the held-out cold campaigns' TEST logs (observed clicks only), the generated weights rank clicks and
    predict them better than the global average CTR of the warm TRAIN logs (a constant: AUC 0.5)."""
    from sklearn.metrics import log_loss, roc_auc_score

    cs = prep.campaigns
    m = lh.generate_cold(prep, emb, k=5, temperature=0.1)
    rows = cs.logs(TEST, cs.cold_ids)
    y = cs.log_click[rows]
    z = lh.log_logits(prep, m.weights, m.bias, rows)
    global_ctr = cs.log_click[cs.logs(TRAIN, cs.warm_ids)].mean()
    assert len(rows) > 800 and 50 < y.sum() < len(y) - 50
    assert roc_auc_score(y, z) > 0.6
    assert log_loss(y, lh._sigmoid(z)) < log_loss(y, np.full(len(y), global_ctr)) - 0.005
    # Calibrated on CALIB (the served path), still better than the constant.
    cal = lh.fit_calibrator(lh.log_logits(prep, m.weights, m.bias, cs.logs(CALIB, cs.cold_ids)),
                            cs.log_click[cs.logs(CALIB, cs.cold_ids)])
    assert log_loss(y, lh.apply_calibrator(cal, z)) < log_loss(y, np.full(len(y), global_ctr))
