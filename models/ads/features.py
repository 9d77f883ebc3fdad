"""Training-side CTR features: right-aligned histories and features of logged ad impressions, read from a
dataset (data.build_data.BuildData; the serving features live in serving.ads.features)."""

from __future__ import annotations

import numpy as np

from serving.ads.features import MAX_HISTORY, NUM_FEATURES, FeatureTables, build_profiles, pair_features


def padded_histories(data, users: np.ndarray, times: np.ndarray,
                     max_history: int = MAX_HISTORY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-aligned [P, H] (items, behaviours, timestamps) of each internal user's newest events strictly
    before times (0 = padding): BuildData.histories_before."""
    return data.histories_before(np.asarray(users, np.int64), np.asarray(times, np.int64), max_history)


def log_features(data, logs, tables: FeatureTables, rows: np.ndarray, chunk: int = 20_000) -> np.ndarray:
    """[len(rows), F] features of ad impressions `rows` of `logs` (anything with log_user / log_time /
    log_campaign, e.g. data.campaigns or models.ads.logs.AdLogs), chunked to bound memory."""
    rows = np.asarray(rows, np.int64)
    out = np.empty((len(rows), NUM_FEATURES))
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        items, behs, ts = padded_histories(data, logs.log_user[r], logs.log_time[r])
        prof = build_profiles(tables, items, behs, ts)
        out[s:s + chunk] = pair_features(tables, prof, np.arange(len(r)), logs.log_campaign[r])
    return out
