"""Training-side CTR features: right-aligned histories and features of logged impressions, read from the
simulator's event log (the serving features live in serving.ads.features)."""

from __future__ import annotations

import numpy as np

from serving.ads.features import MAX_HISTORY, NUM_FEATURES, FeatureTables, build_profiles, pair_features


def padded_histories(world, users: np.ndarray, times: np.ndarray,
                     max_history: int = MAX_HISTORY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-aligned [P, H] (items, behaviours, timestamps) of each user's last events strictly before times."""
    users, times = np.asarray(users, np.int64), np.asarray(times, np.int64)
    bounds = np.searchsorted(world.event_user, np.arange(world.config.num_users + 1))
    key_scale = int(world.event_timestamp.max()) + 1
    key = world.event_user * key_scale + world.event_timestamp
    end = np.searchsorted(key, users * key_scale + times, side="left")  # exclusive
    idx = end[:, None] - max_history + np.arange(max_history)[None, :]
    valid = idx >= bounds[users][:, None]
    idx = np.where(valid, idx, 0)
    return (np.where(valid, world.event_item[idx], 0), np.where(valid, world.event_behavior[idx], 0),
            np.where(valid, world.event_timestamp[idx], 0))


def log_features(world, campaigns, tables: FeatureTables, rows: np.ndarray, chunk: int = 20_000) -> np.ndarray:
    """[len(rows), F] features of logged impressions `rows` of a CampaignSet (chunked to bound memory)."""
    out = np.empty((len(rows), NUM_FEATURES))
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        items, behs, ts = padded_histories(world, campaigns.log_user[r], campaigns.log_time[r])
        prof = build_profiles(tables, items, behs, ts)
        out[s:s + chunk] = pair_features(tables, prof, np.arange(len(r)), campaigns.log_campaign[r])
    return out
