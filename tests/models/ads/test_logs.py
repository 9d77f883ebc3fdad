"""The time split of the ad log and the warm/cold rule (models/ads/logs.py), on hand-made logs."""

from __future__ import annotations

import numpy as np
import pytest

from data.build_data import Campaigns
from models.ads.logs import CALIB, TEST, TRAIN, split_ad_logs, time_cuts


def _campaigns(camp, time, click, n_c):
    m = len(camp)
    return Campaigns(campaign_ids=np.arange(n_c, dtype=np.int64) * 10 + 7, text=[f"ad {c}" for c in range(n_c)],
                     item=np.arange(n_c, dtype=np.int64), images=[None] * n_c,
                     audience_top=np.ones((n_c, 2), bool), audience_price=np.ones((n_c, 3), bool),
                     log_user=np.zeros(m, np.int64), log_time=np.asarray(time, np.int64),
                     log_campaign=np.asarray(camp, np.int64), log_click=np.asarray(click, np.int64))


def test_time_cuts_and_ties():
    assert time_cuts(np.arange(100)) == (69, 84)  # TRAIN 0..69, CALIB 70..84, TEST 85..99
    assert time_cuts(np.arange(100)[::-1], (0.5, 0.5, 0.0)) == (49, 99)
    # Ties never straddle a cut: they go to the earlier split (here all 80 at time 5 are TRAIN).
    t = np.array([1] * 10 + [5] * 80 + [9] * 10)
    assert time_cuts(t) == (5, 5)
    # One time for everything: all TRAIN, CALIB and TEST empty.
    assert time_cuts(np.array([3, 3, 3])) == (3, 3)
    with pytest.raises(ValueError, match="empty"):
        time_cuts(np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="fractions"):
        time_cuts(np.arange(5), (0.5, 0.6, 0.1))


def test_split_is_by_time_and_warm_needs_train_clicks():
    rng = np.random.default_rng(0)
    n = 3000
    camp = rng.integers(0, 4, n)
    time = rng.integers(0, 10_000, n)
    click = (rng.random(n) < 0.2).astype(np.int64)
    late = camp == 2
    time[late] = 9_500 + time[late] % 500  # campaign 2 launched in the TEST period
    click[camp == 3] = 0  # campaign 3 never clicked
    logs = split_ad_logs(_campaigns(camp, time, click, 5))
    tr, ca, te = (logs.log_time[logs.log_split == s] for s in (TRAIN, CALIB, TEST))
    assert tr.max() < ca.min() and ca.max() < te.min()
    assert abs(len(tr) / n - 0.7) < 0.01 and abs(len(te) / n - 0.15) < 0.01
    assert logs.cut_times == (int(tr.max()), int(ca.max()))
    # 0 and 1: plenty of TRAIN logs with both labels; 2 launched late; 3 no click; 4 no impression at all.
    assert logs.warm.tolist() == [True, True, False, False, False]
    assert logs.campaign_ids.tolist() == [7, 17, 27, 37, 47] and not logs.held_out.any()
    np.testing.assert_array_equal(logs.logs(TEST, [2]), np.flatnonzero(late & (logs.log_split == TEST)))
    counts = logs.counts()
    assert sum(c["impressions"] for c in counts.values()) == n
    assert counts["train"]["clicks"] == click[logs.log_split == TRAIN].sum()
    assert logs.rule["min_train_impressions"] == 100 and logs.rule["split"] == "time"
    strict = split_ad_logs(_campaigns(camp, time, click, 5), min_train_impressions=10_000)
    assert not strict.warm.any()


def test_holdout_cold_is_seeded_and_only_takes_warm_campaigns():
    rng = np.random.default_rng(1)
    n = 20_000
    camp, time, click = rng.integers(0, 20, n), rng.integers(0, 10**6, n), (rng.random(n) < 0.3).astype(int)
    base = split_ad_logs(_campaigns(camp, time, click, 20))
    assert base.warm.all()
    a = split_ad_logs(_campaigns(camp, time, click, 20), holdout_cold=0.3, seed=3)
    b = split_ad_logs(_campaigns(camp, time, click, 20), holdout_cold=0.3, seed=3)
    c = split_ad_logs(_campaigns(camp, time, click, 20), holdout_cold=0.3, seed=4)
    assert a.held_out.sum() == 6 and (a.warm == ~a.held_out).all()
    np.testing.assert_array_equal(a.warm, b.warm)
    assert not np.array_equal(a.warm, c.warm)
    np.testing.assert_array_equal(a.log_split, base.log_split)  # the split itself does not change
    with pytest.raises(ValueError, match="holdout_cold"):
        split_ad_logs(_campaigns(camp, time, click, 20), holdout_cold=1.0)
    with pytest.raises(ValueError, match="no campaigns"):
        split_ad_logs(None)
