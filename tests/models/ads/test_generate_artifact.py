"""generate_artifact end to end from a dataset: the simulator's (a CLIP-like embedder object, as the build
passes it) and a small messy shop dataset (sparse ids, another event vocabulary, unknown prices, missing brands,
a campaign without a promoted item, launched late)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data.build_data import load_build_data
from models.ads import llm_hyper as lh
from models.ads.features import padded_histories
from serving.ads import META_FILE
from serving.ads.scorer import CtrScorer
from serving.contract import RequestError


class FakeClip:
    """embed_texts / embed_images like models.clip.model.ClipEmbedder: deterministic, normalised."""

    def __init__(self):
        self.image_calls = 0

    def embed_texts(self, texts):
        out = np.array([[sum(map(ord, t)) % 7, len(t) % 5, t.count(" ") % 3, 1.0] for t in texts], np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_images(self, images):
        self.image_calls += 1
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        out = np.stack([images.mean((1, 2)), images.std((1, 2)), np.ones(len(images)), images[:, 14, 14]], 1)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_clip_creative_embeddings_mix_image_and_text(ads_data):
    fake = FakeClip()
    emb = lh.clip_creative_embeddings(fake, ads_data.campaigns)
    assert emb.shape == (40, 4) and fake.image_calls == 1
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0)
    text = fake.embed_texts(ads_data.campaigns.text)
    assert not np.allclose(emb, text, atol=1e-3)  # every simulator campaign has an image


def test_generate_artifact_from_simulator_dataset(ads_data, ads_sim_warm, tmp_path):
    meta = lh.generate_artifact(ads_data, FakeClip(), tmp_path, seed=1, k=4, temperature=0.1, holdout_cold=0.25,
                                extra={"note": "test"})
    on_disk = json.loads((tmp_path / META_FILE).read_text())
    assert on_disk["version"] == meta["version"] and on_disk["note"] == "test"
    assert on_disk["embedding"] == lh.CLIP_EMBEDDING_DESC and on_disk["dataset"] == "simulator-seed5"
    assert on_disk["dataset_campaign_ids"] == ads_data.campaigns.campaign_ids.tolist()
    # Warm: the simulator's warm campaigns less the 25% held out; cold: its late-launched ones and the held out.
    n_held = round(0.25 * ads_sim_warm.sum())
    n_warm, n_cold = int(ads_sim_warm.sum()) - n_held, int((~ads_sim_warm).sum()) + n_held
    split = on_disk["log_split"]
    assert split["split"] == "time" and split["held_out_cold"] == n_held > 0
    assert split["warm_campaigns"] == n_warm and split["cold_campaigns"] == n_cold
    assert sum(c["impressions"] for c in split["counts"].values()) == len(ads_data.campaigns.log_click)
    src = np.array([c["source"] for c in on_disk["campaigns"]])
    assert set(src[~ads_sim_warm]) == {"hyper"}  # launched late: no TRAIN logs
    s = meta["summary"]
    assert s["sources"] == {"warm": n_warm, "hyper": n_cold, "llm": 0, "median": 0} and s["k"] == 4
    assert s["test"]["cold"]["campaigns"] == n_cold and s["test"]["held_out_cold"]["campaigns"] == n_held
    # FakeClip's embeddings say nothing about the campaigns, so the cold groups' neighbours are arbitrary and their
    # ranking is near chance (AUC 0.43-0.65 over split seeds on this data, whose cold-start campaigns launch late):
    # with it, every group is evaluated and calibrated, and the warm models rank.
    for group in ("all", "warm", "cold", "held_out_cold"):
        assert s["test"][group]["auc"] is not None and s["test"][group]["ece_15"] < 0.08
    for group in ("all", "warm"):
        assert 0.6 < s["test"][group]["auc"] < 0.95
    # With informative creative embeddings (the attribute fallback) the generated cold-start weights rank too.
    informed = lh.generate_artifact(ads_data, lh.creative_embeddings(ads_data, "attributes")[0], tmp_path / "attr",
                                    "attributes", seed=1, k=4, temperature=0.1, holdout_cold=0.25)["summary"]
    assert informed["sources"] == s["sources"]
    for group in ("all", "warm", "cold", "held_out_cold"):
        assert 0.6 < informed["test"][group]["auc"] < 0.95 and informed["test"][group]["ece_15"] < 0.08
    assert s["test"]["all"]["test_logs"] == split["counts"]["test"]["impressions"]

    scorer = CtrScorer.load(tmp_path)
    np.testing.assert_array_equal(scorer.campaign_ids, ads_data.campaigns.campaign_ids)
    np.testing.assert_array_equal(scorer.internal_campaigns(scorer.campaign_ids[[3, 0]]), [3, 0])
    with pytest.raises(RequestError, match=r"unknown campaign ids \[123456\]"):
        scorer.internal_campaigns([0, 123456])
    h = padded_histories(ads_data, [0], [ads_data.event_timestamp.max() + 1])
    v = h[0][0] > 0
    p = scorer.score(h[0][0][v], h[1][0][v], h[2][0][v], np.arange(40))
    assert p.shape == (40,) and ((p > 0) & (p < 1)).all()


def test_generate_artifact_all_warm_has_no_cold_family(ads_data_all_warm, tmp_path):
    # The simulator's world written with every campaign warm (no late launch): each has TRAIN logs.
    data = ads_data_all_warm
    emb = lh.creative_embeddings(data, "attributes")[0]
    meta = lh.generate_artifact(data, emb, tmp_path, "attributes")
    assert meta["log_split"]["warm_campaigns"] == data.campaigns.num_campaigns == 40
    assert meta["summary"]["sources"] == {"warm": 40, "hyper": 0, "llm": 0, "median": 0}
    assert meta["k"] is None and meta["temperature"] is None and set(meta["calibrators"]) == {"warm"}
    cold = meta["summary"]["test"]["cold"]
    assert cold["campaigns"] == 0 and cold["test_logs"] == 0 and cold["auc"] is None
    CtrScorer.load(tmp_path)


def test_generate_artifact_rejects_bad_inputs(ads_data, tmp_path):
    with pytest.raises(ValueError, match=r"emb must be \[40, D\]"):
        lh.generate_artifact(ads_data, np.zeros((39, 3)), tmp_path, "x")
    with pytest.raises(ValueError, match="no warm campaign"):
        lh.generate_artifact(ads_data, np.eye(40), tmp_path, "x", min_train_impressions=10**6)


def test_old_artifact_format_is_refused(ads_data, tmp_path):
    lh.generate_artifact(ads_data, np.eye(40), tmp_path, "x")
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["format_version"] = 1
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version 1"):
        CtrScorer.load(tmp_path)


# ------------------------------------------------------------------------------ a small messy shop dataset
@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from tests.data.fixture_dataset import ITEM_IDS, MOVIELENS_EVENTS, T0, USERS, write_fixture

    rng = np.random.default_rng(0)
    n = 1200
    camp = rng.choice([900, 17, 4242], size=n, p=[0.45, 0.45, 0.1])
    ts = T0 + rng.integers(0, 5 * 86400, size=n)
    late = camp == 4242
    ts[late] = T0 + 5 * 86400 - rng.integers(0, 86400 // 4, size=int(late.sum()))  # launched in the TEST period
    ads = pd.DataFrame({"user_id": rng.choice(USERS + ["u-new"], size=n), "campaign_id": camp,
                        "timestamp": ts.astype(np.int64), "clicked": rng.random(n) < 0.25})
    d = write_fixture(tmp_path_factory.mktemp("shop") / "shop", ads=True, vocabulary=MOVIELENS_EVENTS,
                      meta={"events": list(MOVIELENS_EVENTS)}, ad_impressions=ads)
    data = load_build_data(d)
    assert data.campaigns.item[data.campaigns.campaign_ids.tolist().index(4242)] == 0
    assert np.isnan(data.catalog.price).sum() > 1 and (data.catalog.brand[1:] == 0).any()
    assert len(ITEM_IDS) == data.num_items
    return data


def test_generate_artifact_from_a_shop_dataset(shop, tmp_path):
    meta = lh.generate_artifact(shop, lh.creative_embeddings(shop, "attributes")[0], tmp_path, "attributes")
    ids = shop.campaigns.campaign_ids.tolist()
    assert ids == [17, 900, 4242] and meta["dataset_campaign_ids"] == ids
    src = {c["campaign_id"]: c["source"] for c in meta["campaigns"]}
    assert src == {17: "warm", 900: "warm", 4242: "hyper"}  # 4242 has no TRAIN impression: cold
    assert meta["k"] == 1 and meta["event_names"] == ["rating_1", "rating_2", "rating_3", "rating_4", "rating_5"]
    # The late campaign has no CALIB logs: its family's calibrator is the identity.
    assert meta["calibrators"]["hyper"] == {"kind": "platt", "n_logs": 0, "identity": True}
    scorer = CtrScorer.load(tmp_path)
    np.testing.assert_array_equal(scorer.campaign_ids, ids)  # read back from the npz (dataset_campaign_ids)
    np.testing.assert_array_equal(scorer.internal_campaigns([4242, 17]), [2, 0])
    np.testing.assert_allclose(scorer.tables.behavior_weight, [0, 1, 1, 1, 1, 3])
    np.testing.assert_allclose(scorer.tables.behavior_strong, [0, 0, 0, 0, 0, 1])
    assert np.isfinite(scorer.tables.item_log_price).all()
    p = scorer.score([1, 2, 3], [5, 1, 2], [10, 20, 30], [0, 1, 2])
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    with pytest.raises(RequestError, match="unknown behavior 6"):
        scorer.score([1], [6], [10], [0])
