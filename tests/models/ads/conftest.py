"""One tiny simulator dataset shared by the ads tests (written once per session)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models.ads.sim_data import sim_campaigns, sim_data

SEED = 5
# 40 campaigns x 600 ad impressions. The simulator makes 28 of them warm (their whole log is written) and 12
# cold-start ones that launch late (only their impressions in the newest 15% of the log's time). With the time
# split (70/15/15) a warm campaign has ~450 TRAIN and ~85 CALIB / TEST impressions: enough for the warm LR, and
# for an isotonic warm calibrator (>= 2000 CALIB logs) while at most ~10% of the warm ones are held out.
IMPRESSIONS = (300, 150, 150)


@pytest.fixture(scope="session")
def ads_data(tmp_path_factory):
    return sim_data(tmp_path_factory, seed=SEED, impressions=IMPRESSIONS)


@pytest.fixture(scope="session")
def ads_sim_warm(ads_data) -> np.ndarray:
    """bool [C]: the simulator's warm flags (data.campaigns.CampaignSet.warm) of ads_data's campaigns, by internal
    id; False = a cold-start campaign (launched late)."""
    np.testing.assert_array_equal(ads_data.campaigns.campaign_ids, np.arange(ads_data.campaigns.num_campaigns))
    warm = sim_campaigns(SEED, impressions=IMPRESSIONS).warm
    assert len(warm) == ads_data.campaigns.num_campaigns and 0 < warm.sum() < len(warm)
    return warm


@pytest.fixture(scope="session")
def ads_data_all_warm(tmp_path_factory):
    """ads_data's world with every campaign warm: each campaign's whole ad log is written."""
    return sim_data(tmp_path_factory, seed=SEED, impressions=IMPRESSIONS, all_warm=True)
