"""Unit tests of the deterministic world simulator (small worlds, no training)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data.simulator import ADD_TO_CART, PURCHASE, REMOVE_FROM_CART, VIEW, SimConfig, World, simulate, summary

SMALL = SimConfig(num_items=200, num_users=120)
ARRAY_FIELDS = [f.name for f in dataclasses.fields(World) if f.name not in ("config", "catalog")]
CATALOG_ARRAYS = ["top_category", "leaf_category", "brand", "price", "price_bucket", "latent", "popularity"]


@pytest.fixture(scope="module")
def world() -> World:
    return simulate(SMALL)


def _journeys(world: World):
    """(start, stop) event index ranges of each journey (events of a journey are contiguous)."""
    j = world.event_journey
    starts = np.flatnonzero(np.r_[True, j[1:] != j[:-1]])
    stops = np.r_[starts[1:], len(j)]
    return list(zip(starts.tolist(), stops.tolist()))


def test_same_seed_gives_identical_world(world):
    again = simulate(SMALL)
    for name in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(world, name), getattr(again, name), err_msg=name)
    for name in CATALOG_ARRAYS:
        np.testing.assert_array_equal(getattr(world.catalog, name), getattr(again.catalog, name), err_msg=name)
    assert world.catalog.titles == again.catalog.titles


def test_different_seed_gives_different_world(world):
    other = simulate(dataclasses.replace(SMALL, seed=1))
    assert not np.array_equal(world.catalog.leaf_category, other.catalog.leaf_category)
    assert (len(world.event_item) != len(other.event_item)
            or not np.array_equal(world.event_item, other.event_item))
    assert not np.array_equal(world.impression_item, other.impression_item)


def test_catalog_shapes_and_padding_row(world):
    cat = world.catalog
    n = SMALL.num_items
    assert cat.num_items == n
    for name in CATALOG_ARRAYS:
        assert len(getattr(cat, name)) == n + 1, name
    assert len(cat.titles) == n + 1 and cat.titles[0] == ""
    assert cat.top_category[0] == 0 and cat.leaf_category[0] == 0 and cat.popularity[0] == 0
    assert np.all(cat.leaf_category[1:] // SMALL.subcategories_per_top == cat.top_category[1:])
    assert cat.leaf_category[1:].max() < SMALL.num_leaf_categories
    assert cat.brand[1:].max() < SMALL.num_brands
    assert set(np.unique(cat.price_bucket[1:]).tolist()) <= set(range(SMALL.num_price_buckets))
    np.testing.assert_allclose(np.linalg.norm(cat.latent[1:], axis=1), 1.0, rtol=1e-5)


def test_events_sorted_by_user_then_time(world):
    u, t = world.event_user, world.event_timestamp
    assert len(u) > 0
    assert np.all(np.diff(u) >= 0)
    same_user = u[1:] == u[:-1]
    assert np.all(np.diff(t)[same_user] > 0)  # strictly increasing: each step adds >= 5 s
    order = np.lexsort((t, u))
    np.testing.assert_array_equal(order, np.arange(len(u)))
    # Every user has a history (the exposures need one).
    assert set(np.unique(u).tolist()) == set(range(SMALL.num_users))


def test_event_items_and_behaviors_valid(world):
    assert world.event_item.min() >= 1 and world.event_item.max() <= SMALL.num_items
    assert set(np.unique(world.event_behavior).tolist()) <= {VIEW, ADD_TO_CART, REMOVE_FROM_CART, PURCHASE}
    n = len(world.event_item)
    for name in ("event_user", "event_behavior", "event_timestamp", "event_journey"):
        assert len(getattr(world, name)) == n, name
    for items in (world.impression_item, world.campaign_item):
        assert items.min() >= 1 and items.max() <= SMALL.num_items
    assert len(np.unique(world.campaign_item)) == SMALL.num_campaigns
    assert world.ad_campaign.min() >= 0 and world.ad_campaign.max() < SMALL.num_campaigns


def test_each_journey_has_one_leaf_category_and_one_user(world):
    leaf = world.catalog.leaf_category[world.event_item]
    journeys = _journeys(world)
    # Journey ids are contiguous, increasing, and never reused.
    ids = [int(world.event_journey[a]) for a, _ in journeys]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for a, b in journeys:
        assert len(np.unique(leaf[a:b])) == 1, (a, b)
        assert len(np.unique(world.event_user[a:b])) == 1, (a, b)
        assert world.event_behavior[a] == VIEW  # journeys begin with views
        n_views = int((world.event_behavior[a:b] == VIEW).sum())
        lo, hi = SMALL.views_per_journey
        assert lo <= n_views <= hi


def test_cart_and_purchase_follow_a_view_of_the_same_item(world):
    checked = {ADD_TO_CART: 0, REMOVE_FROM_CART: 0, PURCHASE: 0}
    for a, b in _journeys(world):
        items, behs = world.event_item[a:b].tolist(), world.event_behavior[a:b].tolist()
        for pos, (item, beh) in enumerate(zip(items, behs)):
            if beh == VIEW:
                continue
            viewed_before = {i for i, bh in zip(items[:pos], behs[:pos]) if bh == VIEW}
            assert item in viewed_before, (a, pos, beh)
            if beh in (REMOVE_FROM_CART, PURCHASE):
                carted_before = {i for i, bh in zip(items[:pos], behs[:pos]) if bh == ADD_TO_CART}
                assert item in carted_before, (a, pos, beh)
            checked[beh] += 1
    assert all(v > 0 for v in checked.values()), checked  # the test exercised every behaviour


def test_impressions_follow_an_event_of_their_user(world):
    for users, times in ((world.impression_user, world.impression_time), (world.ad_user, world.ad_time)):
        assert len(users) == len(times) > 0
        for u, t in zip(users.tolist(), times.tolist()):
            _, _, ts = world.user_history(u)
            assert len(ts) and ts[0] < t, (u, t)
            # Placed just after one of the user's events.
            assert (t - 1) in set(ts.tolist()), (u, t)
    assert len(world.impression_user) == SMALL.num_users * SMALL.impressions_per_user
    assert len(world.ad_user) == SMALL.num_users * SMALL.ad_impressions_per_user


def test_click_rates_plausible(world):
    s = summary(world)
    assert 0.02 < s["ctr"] < 0.4, s
    assert 0.005 < s["ad_ctr"] < 0.4, s
    assert set(np.unique(world.impression_click).tolist()) <= {0, 1}
    ctr = world.impression_true_ctr
    assert np.all((ctr > 0) & (ctr < 1))
    # Clicks were drawn from the true CTR: the observed rate is close to the mean true CTR.
    assert abs(world.impression_click.mean() - ctr.mean()) < 4 * np.sqrt(ctr.mean() / len(ctr)) + 0.01
    # Clicked impressions have a higher true CTR than unclicked ones.
    assert ctr[world.impression_click == 1].mean() > ctr[world.impression_click == 0].mean()


def test_user_history_before_returns_only_earlier_events(world):
    rng = np.random.default_rng(0)
    for u in rng.choice(SMALL.num_users, size=25, replace=False).tolist():
        items, behs, ts = world.user_history(u)
        sel = world.event_user == u
        np.testing.assert_array_equal(items, world.event_item[sel])
        np.testing.assert_array_equal(behs, world.event_behavior[sel])
        np.testing.assert_array_equal(ts, world.event_timestamp[sel])
        for cut in (ts[0], ts[len(ts) // 2], ts[-1], ts[-1] + 1, ts[0] - 1):
            i2, b2, t2 = world.user_history(u, before=int(cut))
            assert np.all(t2 < cut)
            assert len(t2) == int((ts < cut).sum())
            np.testing.assert_array_equal(i2, items[: len(t2)])
            np.testing.assert_array_equal(b2, behs[: len(t2)])
    assert len(world.user_history(0, before=0)[0]) == 0
