"""The CTR artifact (models.ads.llm_hyper.save_artifact / generate_artifact, built from a dataset) and its
numpy serving path (serving.ads.scorer)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from models.ads import llm_hyper as lh
from models.ads.logs import CALIB, TEST, split_ad_logs
from serving.calibration import expected_calibration_error
from models.ads.features import padded_histories
from serving.ads.scorer import CtrScorer
from serving.contract import RequestError


@pytest.fixture(scope="module")
def built(ads_data, tmp_path_factory):
    # The cold family: the simulator's 12 late-launched campaigns + 3 of its 28 warm ones held out (10%), which
    # leaves the warm family enough CALIB logs for an isotonic calibrator (~2100 >= 2000; at 30% held out it
    # would be ~1700 and Platt).
    logs = split_ad_logs(ads_data.campaigns, holdout_cold=0.1, seed=9)
    prep = lh.prepare(ads_data, logs, reference_pool=2000)
    emb, desc = lh.creative_embeddings(ads_data, "attributes")
    models = lh.generate_cold(prep, emb, k=3, temperature=0.1)
    cals, report = lh.fit_family_calibrators(prep, models)
    out = tmp_path_factory.mktemp("ctr")
    meta = lh.save_artifact(out, prep.tables, models, cals, {"embedding": desc}, max_campaigns=32,
                            campaign_ids=logs.campaign_ids, event_names=tuple(ads_data.meta.events))
    return prep, models, cals, report, out, meta


def _request(prep, row):
    cs = prep.campaigns
    h = padded_histories(prep.data, cs.log_user[[row]], cs.log_time[[row]])
    v = h[0][0] > 0
    return h[0][0][v], h[1][0][v], h[2][0][v]


def test_artifact_metadata(built, ads_sim_warm):
    prep, models, cals, _, out, meta = built
    on_disk = json.loads((out / "ctr_meta.json").read_text())
    assert on_disk["version"] == meta["version"] and meta["version"].startswith("2.")
    assert on_disk["dataset_campaign_ids"] == prep.campaigns.campaign_ids.tolist() and on_disk["event_names"] == [
        "view", "add_to_cart", "remove_from_cart", "purchase"]
    assert [c["campaign_id"] for c in on_disk["campaigns"]] == on_disk["dataset_campaign_ids"]
    assert on_disk["feature_names"][0] == "leaf_affinity" and len(on_disk["campaigns"]) == prep.campaigns.num_campaigns
    with np.load(out / "ctr_weights.npz") as z:
        assert "campaign_ids" not in z.files  # that name is the request tensor's (serving.graph.CAMPAIGN_IDS)
        np.testing.assert_array_equal(z["dataset_campaign_ids"], prep.campaigns.campaign_ids)
    # The sources follow the time split: the late-launched campaigns and the held-out ones get generated weights.
    srcs = np.array([c["source"] for c in on_disk["campaigns"]])
    held = prep.campaigns.held_out
    assert held.sum() == round(0.1 * ads_sim_warm.sum()) and not (held & ~ads_sim_warm).any()
    np.testing.assert_array_equal(srcs == "warm", ads_sim_warm & ~held)
    assert set(srcs[~ads_sim_warm | held]) == {"hyper"}
    cold = [c for c in on_disk["campaigns"] if c["source"] == "hyper"]
    assert all(len(c["neighbours"]) == 3 for c in cold)
    assert set(on_disk["calibrators"]) == {"warm", "hyper"}
    # The thin family (15 cold campaigns, ~530 CALIB logs < 2000) gets Platt; the warm one (25 campaigns, ~2100
    # CALIB logs) isotonic.
    assert on_disk["calibrators"]["hyper"]["kind"] == "platt"
    assert on_disk["calibrators"]["hyper"]["n_logs"] < lh.MIN_ISOTONIC_LOGS <= on_disk["calibrators"]["warm"]["n_logs"]
    assert on_disk["calibrators"]["warm"]["kind"] == "isotonic"
    # Same inputs -> same version (deterministic artifact).
    again = lh.save_artifact(out / "again", prep.tables, models, cals, {}, max_campaigns=32,
                             campaign_ids=prep.campaigns.campaign_ids)
    assert again["version"] == meta["version"]


def test_scorer_matches_offline_pipeline(built):
    prep, models, cals, _, out, meta = built
    scorer = CtrScorer.load(out)
    assert scorer.version == meta["version"]
    cs = prep.campaigns
    rows = cs.logs(TEST)[::157][:25]
    for r in rows:
        c = cs.log_campaign[r]
        p = scorer.score(*_request(prep, r), [c])
        z = lh.log_logits(prep, models.weights, models.bias, np.array([r]))
        want = lh.apply_calibrator(cals[lh.SOURCES[models.source[c]]], z)
        np.testing.assert_allclose(p, want, rtol=2e-5, atol=1e-6)  # weights are stored as float32


def test_many_campaigns_one_pass(built):
    prep, _, _, _, out, _ = built
    scorer = CtrScorer.load(out)
    req = _request(prep, 5)
    cids = np.array([3, 0, 31, 7, 3])
    p = scorer.score(*req, cids)
    assert p.shape == (5,) and p.dtype == np.float32 and ((p > 0) & (p < 1)).all()
    assert p[0] == p[4]
    for i, c in enumerate(cids):
        assert scorer.score(*req, [c])[0] == pytest.approx(p[i], abs=1e-7)


def test_calibration_keeps_held_out_ece_low(built):
    """Not "reduces": the calibrators are fit on CALIB (the 15% of the log before TEST in time); TEST comes later,
    and on this tiny log its CTR differs from CALIB's by ~0.02, while the per-campaign LRs are already calibrated
    on their own distribution, so calibration does not lower TEST ECE here (test_served_ece_on_held_out prints
    0.011 -> 0.019). It must not make it materially worse, and the large warm family must end well calibrated."""
    _, _, _, report, _, _ = built
    for fam in report.values():
        assert fam["after"]["ece_15"] < fam["before"]["ece_15"] + 0.015
        assert fam["test_logs"] > 500 and fam["after"]["auc"] > 0.6
    assert report["warm"]["after"]["ece_15"] < 0.03


@pytest.mark.parametrize("kwargs,field,match", [
    ({"cids": [0, 40]}, "campaign_ids", r"unknown campaign ids \[40\]"),
    ({"cids": [-1]}, "campaign_ids", "unknown campaign ids"),
    ({"cids": list(range(33))}, "campaign_ids", "the maximum is 32"),
    ({"cids": []}, "campaign_ids", "at least 1"),
    ({"cids": [0.5]}, "campaign_ids", "integer"),
    ({"items": []}, "item_ids", "history is empty"),
    ({"items": list(range(1, 52))}, "item_ids", "the maximum is 50"),
    ({"items": [0]}, "item_ids", r"1\.\.300"),
    ({"behs": [1, 9]}, "behaviors", "unknown behavior 9"),
    ({"behs": [1]}, "behaviors/timestamps", "lengths must equal"),
    ({"ts": [5, 4]}, "timestamps", "non-decreasing"),
])
def test_request_errors(built, kwargs, field, match):
    out = built[4]
    scorer = CtrScorer.load(out)
    items = kwargs.get("items", [1, 2])
    n = len(items)
    behs = kwargs.get("behs", [1] * n)
    ts = kwargs.get("ts", list(range(100, 100 + n)))
    with pytest.raises(RequestError, match=match) as e:
        scorer.score(np.array(items, np.int64), np.array(behs, np.int64), np.array(ts, np.int64),
                     np.array(kwargs.get("cids", [0]), dtype=None if kwargs.get("cids") else np.int64))
    assert e.value.field == field


def test_version_mismatch_is_refused(built, tmp_path):
    out = built[4]
    for f in ("ctr_weights.npz", "ctr_meta.json"):
        (tmp_path / f).write_bytes((out / f).read_bytes())
    meta = json.loads((tmp_path / "ctr_meta.json").read_text())
    meta["version"] = "1.000000000000"
    (tmp_path / "ctr_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="version"):
        CtrScorer.load(tmp_path)


def test_missing_calibrator_is_refused(built):
    prep, models, cals, *_ = built
    with pytest.raises(ValueError, match="no calibrator"):
        CtrScorer(prep.tables, models.weights, models.bias, models.source, {"warm": cals["warm"]})


def test_served_ece_on_held_out(built):
    """End to end on the small world, through the served scorer (what score_ads runs): its calibrated pCTR on the
    TEST logs (later in time than CALIB, which the calibrators saw) is well calibrated, and equals the offline
    pipeline's. Not asserted: that calibration lowers ECE here. The per-campaign logistic regressions are already
    calibrated on their own distribution, and TEST drifts from CALIB, so on this world served ECE goes 0.011 -> 0.019
    (printed); the families' before/after figures are test_calibration_keeps_held_out_ece_low's."""
    prep, models, cals, *_, out, _ = built
    scorer = CtrScorer.load(out)
    cs = prep.campaigns
    rows = cs.logs(TEST)
    assert len(cs.logs(CALIB)) and not np.intersect1d(cs.logs(CALIB), rows).size
    served = np.array([scorer.score(*_request(prep, r), [cs.log_campaign[r]])[0] for r in rows])
    raw = np.array([scorer.logits(*_request(prep, r), [cs.log_campaign[r]])[0] for r in rows])
    clicks = cs.log_click[rows]
    before = expected_calibration_error(1.0 / (1.0 + np.exp(-raw)), clicks)
    after = expected_calibration_error(served, clicks)
    print(f"served ECE on {len(rows)} TEST logs: {before:.4f} uncalibrated -> {after:.4f}")
    assert after < 0.03
    z = lh.log_logits(prep, models.weights, models.bias, rows)
    src = models.source[cs.log_campaign[rows]]
    offline = np.where(src == lh.WARM, lh.apply_calibrator(cals["warm"], z), lh.apply_calibrator(cals["hyper"], z))
    np.testing.assert_allclose(served, offline, rtol=2e-5, atol=1e-5)  # float32 weights near an isotonic step

def test_score_checked_is_score_without_the_checks(built):
    prep, *_, out, _ = built
    scorer = CtrScorer.load(out)
    items, behs, ts = _request(prep, 0)
    cids = np.arange(min(20, prep.tables.num_campaigns), dtype=np.int64)
    np.testing.assert_array_equal(scorer.score_checked(items.astype(np.int64), behs.astype(np.int64),
                                                       ts.astype(np.int64), cids), scorer.score(items, behs, ts, cids))


def test_the_served_step_refuses_an_artifact_weighing_other_events(built, tmp_path):
    """score_ads checks behaviours against the published vocabulary and skips the scorer's own check, so the
    two must be one vocabulary: a repository where they differ does not load."""
    import shutil

    from serving.catalog import ItemIds
    from serving.contract import ServingLimits
    from serving.steps import ScoreAds

    prep, *_, out, meta = built
    version = tmp_path / "1"
    shutil.copytree(out, version)
    ItemIds(np.arange(prep.tables.num_items + 1)).save(version)
    events = tuple(meta["event_names"])
    limits = ServingLimits(num_items=prep.tables.num_items, num_categories=1, event_names=events)
    assert ScoreAds.create(version, limits).scorer.event_names == events
    with pytest.raises(RuntimeError, match="rebuild the repository"):
        ScoreAds.create(version, dataclasses.replace(limits, event_names=events[:-1] + ("wishlist",)))
