"""Campaign simulation (data/campaigns.py, the simulator's producer of campaigns.parquet and
ad_impressions.parquet) and the user x campaign features (serving/ads/features.py, models/ads/features.py) on
the dataset the simulator writes (data.build_data)."""

from __future__ import annotations

import numpy as np
import pytest

from data.campaigns import CALIB, STYLES, TEST, TRAIN, build_campaigns, true_campaign_ctr
from data.simulator import SimConfig, simulate
from serving.ads.features import (FEATURE_NAMES, FeatureTables, LinearCtr, behavior_weights, build_profiles,
                                  log_prices, pair_features, user_campaign_features)
from models.ads.features import log_features, padded_histories
from tests.models.ads.sim_data import sim_data

CFG = SimConfig(seed=3, num_items=300, num_users=200, num_campaigns=40)
IMPRESSIONS = (120, 60, 80)


@pytest.fixture(scope="module")
def world():
    return simulate(CFG)


@pytest.fixture(scope="module")
def cs(world):
    return build_campaigns(world, seed=3, impressions=IMPRESSIONS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same world and campaigns written as a dataset and read back (data.build_data)."""
    return sim_data(tmp_path_factory, seed=3, num_items=300, num_users=200, num_campaigns=40, impressions=IMPRESSIONS)


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


def test_dataset_carries_the_simulated_campaigns(world, cs, data):
    """The written dataset's campaigns and ad log are the simulator's (its ids are 0..C-1, items 1..N); cold-start
    campaigns launch late: only their impressions after the log's 85% time point are written."""
    from data.simulator import COLD_LAUNCH_QUANTILE

    c = data.campaigns
    np.testing.assert_array_equal(c.campaign_ids, np.arange(cs.num_campaigns))
    np.testing.assert_array_equal(data.catalog.item_ids[c.item], cs.item)
    logged = cs.warm[cs.log_campaign] | (cs.log_time > np.quantile(cs.log_time, COLD_LAUNCH_QUANTILE))
    assert 0 < (~logged).sum() < len(logged)
    np.testing.assert_array_equal(c.log_click, cs.log_click[logged])
    np.testing.assert_array_equal(c.log_time, cs.log_time[logged])
    assert c.text == cs.text
    np.testing.assert_array_equal(data.user_ids[c.log_user].astype(np.int64), cs.log_user[logged])
    cold_first = c.log_time[~cs.warm[c.log_campaign]].min()
    assert cold_first > np.quantile(c.log_time, 0.7)  # a time split sees no training impression of theirs
    # Targeting survives the round trip: the promoted item's top category and price bucket are targeted.
    top = data.catalog.top_category[c.item]
    assert c.audience_top[np.arange(len(top)), top].all()
    assert c.audience_price[np.arange(len(top)), data.catalog.price_bucket[c.item]].all()


def test_history_is_never_empty_and_strictly_before(data):
    c = data.campaigns
    items, behs, ts = padded_histories(data, c.log_user[:500], c.log_time[:500])
    assert items.shape == (500, 50)
    assert (items[:, -1] > 0).all()  # right-aligned: the newest event is always present
    assert (ts[items > 0] < np.repeat(c.log_time[:500], (items > 0).sum(1))).all()
    # Exactly the user's newest events before the time.
    u, t = c.log_user[7], c.log_time[7]
    its, bs, tss = data.user_history(u, before=t)
    v = items[7] > 0
    np.testing.assert_array_equal(items[7][v], its[-50:])
    np.testing.assert_array_equal(behs[7][v], bs[-50:])


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


def _naive_features(data, items, behs, ts, c):
    """Per-pair loop implementation of the documented features: the oracle for the vectorised code."""
    cat, camp = data.catalog, data.campaigns
    weight, strong = behavior_weights(data.meta.events, data.meta.conversion_event)
    keep = items > 0
    items, behs, ts = items[keep], behs[keep], ts[keep].astype(float)
    f = np.zeros(len(FEATURE_NAMES))
    if len(items) == 0:
        return f
    bw = weight[behs] * 2.0 ** (-(ts[-1] - ts) / (3 * 86400.0))
    share = bw / bw.sum()
    lp = log_prices(cat.price)
    it = camp.item[c]
    f[7] = share[camp.audience_top[c][cat.top_category[items]]].sum()
    f[8] = share[camp.audience_price[c][cat.price_bucket[items]]].sum()
    f[10] = np.log1p(len(items)) / np.log1p(50)
    if it == 0:
        return f
    f[0] = share[cat.leaf_category[items] == cat.leaf_category[it]].sum()
    f[1] = share[cat.top_category[items] == cat.top_category[it]].sum()
    f[2] = share[cat.brand[items] == cat.brand[it]].sum() if cat.brand[it] > 0 else 0.0
    f[3] = share[items == it].sum()
    f[4] = cat.leaf_category[items[-1]] == cat.leaf_category[it]
    f[5] = cat.top_category[items[-1]] == cat.top_category[it]
    f[6] = np.exp(-abs(lp[it] - (share * lp[items]).sum()))
    f[9] = share[(cat.leaf_category[items] == cat.leaf_category[it]) & (strong[behs] > 0)].sum()
    return f


def test_features_match_naive_oracle(data):
    tables = FeatureTables.from_data(data)
    c = data.campaigns
    rows = np.arange(0, len(c.log_click), 97)[:40]
    x = log_features(data, c, tables, rows)
    h = padded_histories(data, c.log_user[rows], c.log_time[rows])
    for i, r in enumerate(rows):
        want = _naive_features(data, h[0][i], h[1][i], h[2][i], c.log_campaign[r])
        np.testing.assert_allclose(x[i], want, rtol=1e-5, atol=1e-6)
    assert x.min() >= 0 and x.max() <= 1 + 1e-9


def test_tables_from_data(data):
    t = FeatureTables.from_data(data)
    cat = data.catalog
    assert (t.num_leaves, t.num_tops, t.num_brands, t.num_buckets) == (
        cat.num_leaf_categories, cat.num_top_categories, cat.num_brands, cat.num_price_buckets)
    assert t.audience_top.shape == (40, t.num_tops) and t.audience_price.shape == (40, t.num_buckets)
    np.testing.assert_allclose(t.item_log_price[1:], np.log(cat.price[1:]))
    assert np.isfinite(t.item_log_price[0])  # the padding row (unknown price) is imputed, never NaN
    np.testing.assert_allclose(t.behavior_weight, [0, 1, 2, 0.5, 3])
    np.testing.assert_allclose(t.behavior_strong, [0, 0, 1, 0, 1])
    again = FeatureTables.from_arrays(t.to_arrays())
    assert again.num_behaviors == 5 and again.num_tops == t.num_tops


def test_behavior_weights_follow_the_vocabulary():
    w, s = behavior_weights(("click", "like", "buy"), "buy")
    np.testing.assert_allclose(w, [0, 1, 1, 3])
    np.testing.assert_allclose(s, [0, 0, 0, 1])
    w, s = behavior_weights(("view", "add_to_cart", "order"), "order")
    np.testing.assert_allclose(w, [0, 1, 2, 3])
    np.testing.assert_allclose(s, [0, 0, 1, 1])


def test_unknown_prices_no_item_and_empty_history(data):
    """Items without a price take the median log price; a campaign without a promoted item has only the
    audience and activity features; an empty history (a user without earlier events) has all features 0."""
    import dataclasses

    np.testing.assert_allclose(log_prices(np.array([np.nan, 1.0, np.e, np.nan, np.e ** 3])),
                               [1.0, 0.0, 1.0, 1.0, 3.0])
    np.testing.assert_allclose(log_prices(np.array([np.nan, np.nan])), [0.0, 0.0])
    t = FeatureTables.from_data(data)
    no_item = dataclasses.replace(t, campaign_item=np.where(np.arange(40) == 2, 0, t.campaign_item))
    c = data.campaigns
    h = padded_histories(data, c.log_user[:5], c.log_time[:5])
    x = pair_features(no_item, build_profiles(no_item, *h), np.arange(5)[:, None], np.array([[2, 3]]))
    assert (x[:, 0, [0, 1, 2, 3, 4, 5, 6, 9]] == 0).all() and (x[:, 0, 10] > 0).all()
    np.testing.assert_allclose(x[:, 0, [7, 8]], pair_features(t, build_profiles(t, *h), np.arange(5),
                                                               np.full(5, 2))[:, [7, 8]])
    empty = np.zeros((1, 50), np.int64)
    assert (user_campaign_features(t, empty, empty, empty, np.arange(40)) == 0).all()
    assert (padded_histories(data, [0], [0])[0] == 0).all()  # nothing before the epoch


def test_serving_shape_and_equivalence(data):
    tables = FeatureTables.from_data(data)
    c = data.campaigns
    h = padded_histories(data, c.log_user[:3], c.log_time[:3])
    cids = np.arange(c.num_campaigns)
    batch = user_campaign_features(tables, *h, cids)
    assert batch.shape == (3, c.num_campaigns, len(FEATURE_NAMES))
    # One unpadded history gives the same features as its padded row (padding is ignored).
    v = h[0][1] > 0
    one = user_campaign_features(tables, h[0][1][v], h[1][1][v], h[2][1][v], cids)
    np.testing.assert_allclose(one[0], batch[1], atol=1e-12)
    prof = build_profiles(tables, *h)
    np.testing.assert_allclose(prof.leaf.sum(1), 1.0)


def test_served_logits_equal_the_features_times_the_weights(data):
    """LinearCtr (what score_ads computes: the weights folded into the profile's lookup row) is the linear model
    over pair_features, for campaigns with and without a promoted item or a brand, and for an empty history."""
    import dataclasses

    t = FeatureTables.from_data(data)
    c = data.campaigns
    rng = np.random.default_rng(0)
    t = dataclasses.replace(t, campaign_item=np.where(np.arange(c.num_campaigns) % 5 == 0, 0, t.campaign_item),
                            item_brand=np.where(np.arange(t.num_items + 1) % 3 == 0, 0, t.item_brand))
    assert (t.campaign_columns[2] == 0).any() and (t.campaign_item == 0).any()
    weights, bias = rng.normal(size=(c.num_campaigns, len(FEATURE_NAMES))), rng.normal(size=c.num_campaigns)
    linear = LinearCtr(t, weights, bias)
    h = padded_histories(data, c.log_user[:40], c.log_time[:40])
    h[0][0] = 0  # an empty history
    cids = rng.integers(0, c.num_campaigns, 60)
    x = pair_features(t, build_profiles(t, *h), np.arange(40)[:, None], cids[None])
    assert (x[0] == 0).all() and (x[1:, :, FEATURE_NAMES.index("brand_affinity")] > 0).any()
    for u in range(40):
        np.testing.assert_allclose(linear.logits(build_profiles(t, h[0][u], h[1][u], h[2][u]), cids),
                                   np.einsum("cf,cf->c", x[u], weights[cids]) + bias[cids], rtol=1e-12, atol=1e-12)
