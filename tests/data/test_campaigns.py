"""Campaign simulation (data/campaigns.py) and the user x campaign features (serving/ads/features.py,
models/ads/features.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from data.campaigns import CALIB, STYLES, TEST, TRAIN, build_campaigns, true_campaign_ctr
from data.simulator import SimConfig, simulate
from serving.ads.features import FEATURE_NAMES, FeatureTables, build_profiles, user_campaign_features
from models.ads.features import log_features, padded_histories

CFG = SimConfig(seed=3, num_items=300, num_users=200, num_campaigns=40)


@pytest.fixture(scope="module")
def world():
    return simulate(CFG)


@pytest.fixture(scope="module")
def cs(world):
    return build_campaigns(world, seed=3, impressions=(120, 60, 80))


def test_deterministic(world, cs):
    again = build_campaigns(world, seed=3, impressions=(120, 60, 80))
    for name in ("item", "style", "audience_top", "warm", "log_user", "log_time", "log_click", "log_split"):
        np.testing.assert_array_equal(getattr(cs, name), getattr(again, name))
    assert cs.text == again.text
    other = build_campaigns(world, seed=4, impressions=(120, 60, 80))
    assert not np.array_equal(other.log_click, cs.log_click)


def test_structure(world, cs):
    c = cs.num_campaigns
    assert c == len(world.campaign_item) and np.array_equal(cs.item, world.campaign_item)
    assert cs.warm.sum() == round(0.7 * c) and len(cs.cold_ids) == c - cs.warm.sum()
    # Every campaign targets its own item's top category and a price range around the item's bucket.
    top = world.catalog.top_category[cs.item]
    assert cs.audience_top[np.arange(c), top].all()
    assert cs.audience_price[np.arange(c), world.catalog.price_bucket[cs.item]].all()
    assert all(isinstance(t, str) and t and "$" not in t and not t.startswith("brand") for t in cs.text)
    assert set(cs.style.tolist()) <= set(range(len(STYLES)))
    per = np.bincount(cs.log_campaign, minlength=c)
    assert (per == 260).all()
    for split, n in ((TRAIN, 120), (CALIB, 60), (TEST, 80)):
        assert len(cs.logs(split)) == n * c
    assert 0.02 < cs.log_click.mean() < 0.5
    assert ((cs.log_true_ctr > 0) & (cs.log_true_ctr < 1)).all()


def test_history_is_never_empty_and_strictly_before(world, cs):
    items, behs, ts = padded_histories(world, cs.log_user[:500], cs.log_time[:500])
    assert (items[:, -1] > 0).all()  # right-aligned: the newest event is always present
    assert (ts[items > 0] < np.repeat(cs.log_time[:500], (items > 0).sum(1))).all()


def test_hidden_model_depends_on_audience_and_intent(world, cs):
    """The same impressions scored with the audience (or intent) coefficient zeroed must change CTR."""
    rows = np.arange(2000)
    args = (world, cs.item, cs.true_coef, cs.true_quality, cs.audience_top, cs.audience_price,
            cs.log_user[rows], cs.log_time[rows], cs.log_campaign[rows])
    np.testing.assert_allclose(true_campaign_ctr(*args), cs.log_true_ctr[rows])
    for j in (1, 2):
        coef = cs.true_coef.copy()
        coef[:, j] = 0
        changed = true_campaign_ctr(world, cs.item, coef, *args[3:])
        assert np.abs(changed - cs.log_true_ctr[rows]).max() > 0.05


def test_bad_arguments(world):
    with pytest.raises(ValueError, match="warm_fraction"):
        build_campaigns(world, warm_fraction=1.0)
    with pytest.raises(ValueError, match="impressions"):
        build_campaigns(world, impressions=(10, 0, 5))


def _naive_features(world, cs, items, behs, ts, c):
    """Per-pair loop implementation of the documented features: the oracle for the vectorised code."""
    cat = world.catalog
    keep = items > 0
    items, behs, ts = items[keep], behs[keep], ts[keep].astype(float)
    bw = np.array([0.0, 1.0, 2.0, 0.5, 3.0])[behs] * 2.0 ** (-(ts[-1] - ts) / (3 * 86400.0))
    share = bw / bw.sum()
    it = cs.item[c]
    f = np.zeros(len(FEATURE_NAMES))
    f[0] = share[cat.leaf_category[items] == cat.leaf_category[it]].sum()
    f[1] = share[cat.top_category[items] == cat.top_category[it]].sum()
    f[2] = share[cat.brand[items] == cat.brand[it]].sum()
    f[3] = share[items == it].sum()
    f[4] = cat.leaf_category[items[-1]] == cat.leaf_category[it]
    f[5] = cat.top_category[items[-1]] == cat.top_category[it]
    f[6] = np.exp(-abs(np.log(cat.price[it]) - (share * np.log(cat.price[items])).sum()))
    f[7] = share[cs.audience_top[c][cat.top_category[items]]].sum()
    f[8] = share[cs.audience_price[c][cat.price_bucket[items]]].sum()
    f[9] = share[(cat.leaf_category[items] == cat.leaf_category[it]) & np.isin(behs, (2, 4))].sum()
    f[10] = np.log1p(len(items)) / np.log1p(50)
    return f


def test_features_match_naive_oracle(world, cs):
    tables = FeatureTables.from_world(world, cs)
    rows = np.arange(0, len(cs.log_click), 97)[:40]
    x = log_features(world, cs, tables, rows)
    h = padded_histories(world, cs.log_user[rows], cs.log_time[rows])
    for i, r in enumerate(rows):
        want = _naive_features(world, cs, h[0][i], h[1][i], h[2][i], cs.log_campaign[r])
        np.testing.assert_allclose(x[i], want, rtol=1e-5, atol=1e-6)
    assert x.min() >= 0 and x.max() <= 1 + 1e-9


def test_serving_shape_and_equivalence(world, cs):
    tables = FeatureTables.from_world(world, cs)
    h = padded_histories(world, cs.log_user[:3], cs.log_time[:3])
    cids = np.arange(cs.num_campaigns)
    batch = user_campaign_features(tables, *h, cids)
    assert batch.shape == (3, cs.num_campaigns, len(FEATURE_NAMES))
    # One unpadded history gives the same features as its padded row (padding is ignored).
    v = h[0][1] > 0
    one = user_campaign_features(tables, h[0][1][v], h[1][1][v], h[2][1][v], cids)
    np.testing.assert_allclose(one[0], batch[1], atol=1e-12)
    prof = build_profiles(tables, *h)
    np.testing.assert_allclose(prof.leaf.sum(1), 1.0)


def test_features_fast_for_100_campaigns(world, cs):
    tables = FeatureTables.from_world(world, cs)
    h = padded_histories(world, cs.log_user[:1], cs.log_time[:1])
    cids = np.resize(np.arange(cs.num_campaigns), 100)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        user_campaign_features(tables, *h, cids)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 1e-3  # loose: measured ~0.2 ms on the shared 2-core machine
