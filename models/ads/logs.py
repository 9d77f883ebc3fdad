"""The ad impression log of a dataset split for training the CTR models, and which campaigns are warm.

Split by time, over all ad impressions together (data.build_data.Campaigns.log_*): the oldest 70% are TRAIN
(the warm per-campaign models are fitted on them), the next 15% CALIB (the per-family calibrators and the
leave-one-out choice of k and temperature), the newest 15% TEST (the reported metrics). The cuts are
timestamps, so impressions with the same time always land in the same split, the earlier one: TRAIN =
time <= t_train, CALIB = t_train < time <= t_calib, TEST = time > t_calib, where t_train / t_calib are the times
of the last impression within the first 70% / 85% of the log sorted by time (heavy ties make a later split
smaller than its share, or empty; a log whose impressions all share one time is all TRAIN).

A campaign is WARM when its TRAIN impressions reach `min_train_impressions` with at least `min_train_clicks`
clicks and `min_train_clicks` non-clicks (both labels, enough to fit a regularised logistic regression); every
other campaign is COLD (it gets generated weights: models.ads.llm_hyper). A campaign launched during the
CALIB or TEST period is therefore cold, as it would be in production.

`holdout_cold` (evaluation only; 0 in a production build) additionally turns a random fraction of the warm
campaigns cold: their TRAIN impressions stay in the log (LR-warm upper bound in evaluation.ctr_evaluate) but
no model trained here sees them. That is how the cold-start path is measured against the truth: a campaign that
launched late (as the simulator's cold-start ones do, data.simulator.write_dataset) has no TRAIN logs to fit the
upper bound on.

Every metric is computed from observed clicks only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data.campaigns import CALIB, SPLITS, TEST, TRAIN, SplitCampaignLogs  # noqa: F401 - the split codes, re-exported
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
MIN_TRAIN_IMPRESSIONS = 100
MIN_TRAIN_CLICKS = 5


@dataclasses.dataclass
class AdLogs(SplitCampaignLogs):
    """Campaign columns (internal ids 0..C-1) and the ad log, with a split per impression and warm flags."""

    campaign_ids: np.ndarray  # int64 [C] the dataset's campaign ids
    text: list[str]  # [C] ad copy
    item: np.ndarray  # int64 [C] promoted internal item (0 = none)
    audience_top: np.ndarray  # bool [C, T]
    audience_price: np.ndarray  # bool [C, P]
    log_user: np.ndarray  # int64 [M] internal user
    log_time: np.ndarray  # int64 [M]
    log_campaign: np.ndarray  # int64 [M]
    log_click: np.ndarray  # int64 [M]
    log_split: np.ndarray  # int64 [M] TRAIN / CALIB / TEST
    warm: np.ndarray  # bool [C]
    held_out: np.ndarray  # bool [C] made cold by holdout_cold (had enough TRAIN logs to be warm)
    cut_times: tuple[int, int]  # (t_train, t_calib): the last TRAIN and the last CALIB time
    rule: dict  # how the split and the warm set were made (for the artifact's metadata)

    @property
    def num_campaigns(self) -> int:
        return len(self.campaign_ids)


    def counts(self) -> dict:
        """Impressions and clicks per split (all campaigns)."""
        return {name: {"impressions": int((self.log_split == s).sum()),
                       "clicks": int(self.log_click[self.log_split == s].sum())} for s, name in enumerate(SPLITS)}


def time_cuts(times: np.ndarray, fractions=SPLIT_FRACTIONS) -> tuple[int, int]:
    """(t_train, t_calib): the times of the last impression within the train and train + calib fractions of the
    log sorted by time."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9 or fractions[0] <= 0:
        raise ValueError(f"fractions must be (train > 0, calib >= 0, test >= 0) summing to 1, got {fractions}")
    t = np.sort(np.asarray(times, np.int64))
    if len(t) == 0:
        raise ValueError("the ad log is empty: nothing to split")

    def last_within(frac: float) -> int:
        return int(t[min(max(int(np.ceil(frac * len(t) - 1e-9)), 1), len(t)) - 1])

    return last_within(fractions[0]), last_within(fractions[0] + fractions[1])


def split_ad_logs(campaigns, fractions=SPLIT_FRACTIONS, min_train_impressions: int = MIN_TRAIN_IMPRESSIONS,
                  min_train_clicks: int = MIN_TRAIN_CLICKS, holdout_cold: float = 0.0, seed: int = 0) -> AdLogs:
    """AdLogs of a data.build_data.Campaigns: the time split and the warm set described above. Deterministic
    in (campaigns, arguments, seed)."""
    if campaigns is None:
        raise ValueError("the dataset has no campaigns (campaigns + ad_impressions): nothing to train")
    if not 0.0 <= holdout_cold < 1.0:
        raise ValueError(f"holdout_cold must be in [0, 1), got {holdout_cold}")
    if min_train_impressions < 20 or min_train_clicks < 1:
        raise ValueError(f"a warm campaign needs >= 20 training impressions and >= 1 click of each label, got "
                         f"min_train_impressions={min_train_impressions}, min_train_clicks={min_train_clicks}")
    time = np.asarray(campaigns.log_time, np.int64)
    t_train, t_calib = time_cuts(time, fractions)
    split = np.where(time <= t_train, TRAIN, np.where(time <= t_calib, CALIB, TEST)).astype(np.int64)
    n_c = campaigns.num_campaigns
    camp = np.asarray(campaigns.log_campaign, np.int64)
    click = np.asarray(campaigns.log_click, np.int64)
    tr = split == TRAIN
    n_train = np.bincount(camp[tr], minlength=n_c)
    c_train = np.bincount(camp[tr], weights=click[tr], minlength=n_c).astype(np.int64)
    warm = (n_train >= min_train_impressions) & (c_train >= min_train_clicks) & \
           (n_train - c_train >= min_train_clicks)
    held = np.zeros(n_c, bool)
    if holdout_cold > 0 and warm.any():
        ids = np.flatnonzero(warm)
        pick = np.random.default_rng([seed, 7]).permutation(ids)[:int(round(holdout_cold * len(ids)))]
        held[pick] = True
        warm[pick] = False
    rule = {"split": "time", "fractions": [float(f) for f in fractions], "cut_times": [t_train, t_calib],
            "min_train_impressions": int(min_train_impressions), "min_train_clicks": int(min_train_clicks),
            "holdout_cold": float(holdout_cold), "seed": int(seed)}
    return AdLogs(campaign_ids=np.asarray(campaigns.campaign_ids, np.int64), text=list(campaigns.text),
                  item=np.asarray(campaigns.item, np.int64), audience_top=np.asarray(campaigns.audience_top, bool),
                  audience_price=np.asarray(campaigns.audience_price, bool),
                  log_user=np.asarray(campaigns.log_user, np.int64), log_time=time, log_campaign=camp,
                  log_click=click, log_split=split, warm=warm, held_out=held, cut_times=(t_train, t_calib), rule=rule)
