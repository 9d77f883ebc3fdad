"""Serving path of the per-campaign CTR models: features, a dot product, then calibration.

numpy only (no torch, no sklearn): loads the artifact written by models.ads.llm_hyper (generate_artifact, or
`python -m models.ads.llm_hyper generate`). Each campaign's logit w_c . x(u, c) + b_c goes through its model
family's calibrator (isotonic = one np.interp, Platt = a sigmoid); both are fit on held-out logs at generation
time.

Ids: `score` takes internal ids, the ones the artifact is indexed by: items 1..num_items (data.build_data's
internal item ids) and campaigns 0..C-1. `campaign_ids[c]` is the dataset's id of campaign c (npz key
`dataset_campaign_ids`, serving.ads.DATASET_CAMPAIGN_IDS_KEY); `internal_campaigns` maps the dataset's ids to
internal ones at the edge. Behaviour codes follow the artifact's event vocabulary (`event_names`, code i+1 =
event_names[i]).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serving.ads import DATASET_CAMPAIGN_IDS_KEY, FORMAT_VERSION, META_FILE, WEIGHTS_FILE
from serving.ads.features import FEATURE_NAMES, MAX_HISTORY, FeatureTables, LinearCtr, build_profiles
from serving.contract import DEFAULT_EVENT_NAMES, RequestError, default_limit
from serving.graph import CAMPAIGN_IDS
from serving.validation import integer_array, validate_history

SOURCES = ("warm", "hyper", "llm", "median")  # same order as models.ads.llm_hyper.SOURCES


class CtrScorer:
    def __init__(self, tables: FeatureTables, weights: np.ndarray, bias: np.ndarray, source: np.ndarray,
                 calibrators: dict[str, dict], max_campaigns: int = default_limit("max_campaigns"),
                 max_history: int = MAX_HISTORY, version: str = "unversioned",
                 campaign_ids: np.ndarray | None = None, event_names: tuple[str, ...] = DEFAULT_EVENT_NAMES):
        c = tables.num_campaigns
        if weights.shape != (c, len(FEATURE_NAMES)) or bias.shape != (c,) or source.shape != (c,):
            raise ValueError(f"weights/bias/source must be [{c}, F]/[{c}]/[{c}], got {weights.shape}/{bias.shape}/"
                             f"{source.shape}")
        missing = sorted({SOURCES[s] for s in np.unique(source)} - set(calibrators))
        if missing:
            raise ValueError(f"calibrators: no calibrator for model families {missing}")
        self.tables, self.version = tables, version
        self.weights, self.bias = np.ascontiguousarray(weights, np.float64), np.asarray(bias, np.float64)
        self.source = np.asarray(source, np.int64)
        self.linear = LinearCtr(tables, self.weights, self.bias)
        self.calibrators = calibrators
        self.max_campaigns, self.max_history = int(max_campaigns), int(max_history)
        ids = np.arange(c, dtype=np.int64) if campaign_ids is None else np.asarray(campaign_ids, np.int64)
        if ids.shape != (c,) or (c > 1 and np.any(np.diff(ids) <= 0)):
            raise ValueError(f"campaign_ids must be {c} strictly increasing ids, got shape {ids.shape}")
        self.campaign_ids = ids
        self.event_names = tuple(event_names)
        if len(self.event_names) + 1 != tables.num_behaviors:
            raise ValueError(f"{len(self.event_names)} event names but the feature tables weigh "
                             f"{tables.num_behaviors - 1} behaviours")

    @classmethod
    def load(cls, directory: str | Path) -> "CtrScorer":
        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{d}: artifact format_version {meta.get('format_version')}; this code reads "
                             f"{FORMAT_VERSION} (rebuild it with models.ads.llm_hyper.generate_artifact)")
        with np.load(d / WEIGHTS_FILE, allow_pickle=False) as z:
            if str(z["version"]) != meta["version"]:
                raise ValueError(f"{d}: {WEIGHTS_FILE} version {z['version']} != {META_FILE} {meta['version']}")
            if list(meta["feature_names"]) != list(FEATURE_NAMES):
                raise ValueError(f"{d}: artifact features {meta['feature_names']} differ from this code's")
            tables = FeatureTables.from_arrays({k[len("table_"):]: z[k] for k in z.files if k.startswith("table_")})
            cals = {}
            for name, info in meta["calibrators"].items():
                if info["kind"] == "isotonic":
                    cals[name] = {"kind": "isotonic", "x": z[f"cal_{name}_x"], "y": z[f"cal_{name}_y"]}
                else:
                    a, b = z[f"cal_{name}_ab"]
                    cals[name] = {"kind": "platt", "a": float(a), "b": float(b)}
            return cls(tables, z["weights"], z["bias"], z["source"], cals, int(z["max_campaigns"]),
                       version=meta["version"], campaign_ids=z[DATASET_CAMPAIGN_IDS_KEY],
                       event_names=tuple(meta["event_names"]))

    def internal_campaigns(self, campaign_ids) -> np.ndarray:
        """int64 internal ids (0..C-1) of the dataset's campaign ids; RequestError naming unknown ones."""
        ids = integer_array(CAMPAIGN_IDS.name, campaign_ids).astype(np.int64)
        pos = np.minimum(np.searchsorted(self.campaign_ids, ids), len(self.campaign_ids) - 1)
        bad = ids[self.campaign_ids[pos] != ids]
        if len(bad):
            raise RequestError(CAMPAIGN_IDS.name, f"unknown campaign ids {bad[:5].tolist()}")
        return pos.astype(np.int64)

    def _validate(self, items, behaviors, timestamps, campaign_ids):
        items, behs, ts = validate_history(items, behaviors, timestamps, max_history=self.max_history,
                                           num_items=self.tables.num_items, event_names=self.event_names)
        cids = integer_array(CAMPAIGN_IDS.name, campaign_ids)
        if len(cids) == 0:
            raise RequestError(CAMPAIGN_IDS.name, "at least 1 campaign is required")
        if len(cids) > self.max_campaigns:
            raise RequestError(CAMPAIGN_IDS.name, f"{len(cids)} campaigns; the maximum is {self.max_campaigns}")
        bad = cids[(cids < 0) | (cids >= self.tables.num_campaigns)]
        if len(bad):
            raise RequestError(CAMPAIGN_IDS.name, f"unknown campaign ids {bad[:5].tolist()}; valid ids are "
                                                  f"0..{self.tables.num_campaigns - 1}")
        return items, behs, ts, cids.astype(np.int64)

    def logits(self, history_items, history_behaviors, history_timestamps, campaign_ids) -> np.ndarray:
        return self._logits(*self._validate(history_items, history_behaviors, history_timestamps, campaign_ids))

    def _logits(self, items, behs, ts, cids) -> np.ndarray:
        return self.linear.logits(build_profiles(self.tables, items[None], behs[None], ts[None]), cids)

    def score(self, history_items, history_behaviors, history_timestamps, campaign_ids) -> np.ndarray:
        """Calibrated pCTR float32 [C] for one user's history (oldest event first) and campaigns."""
        return self.score_checked(*self._validate(history_items, history_behaviors, history_timestamps,
                                                  campaign_ids))

    def score_checked(self, items: np.ndarray, behaviors: np.ndarray, timestamps: np.ndarray,
                      campaign_ids: np.ndarray) -> np.ndarray:
        """`score` for inputs its caller has checked as `_validate` does (int64 internal ids in range, 1..
        max_history events, 1..max_campaigns campaigns): the served step checks the request at its edge."""
        z = self._logits(items, behaviors, timestamps, campaign_ids)
        src = self.source[campaign_ids]
        out = np.empty_like(z)
        for s in np.flatnonzero(np.bincount(src, minlength=len(SOURCES))):  # one pass per family present
            m = src == s
            cal = self.calibrators[SOURCES[s]]
            if cal["kind"] == "isotonic":
                out[m] = np.interp(z[m], cal["x"], cal["y"])
            else:
                out[m] = 1.0 / (1.0 + np.exp(-(cal["a"] * z[m] + cal["b"])))
        return out.astype(np.float32)
