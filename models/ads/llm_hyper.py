"""LLM-HYPER: per-campaign linear CTR models; cold-start weights written by a hypernetwork step.

Everything is read from a dataset (data.build_data.BuildData with campaigns): the catalog and the event log
give the features (serving.ads.features), the ad impression log is split by time (models.ads.logs: oldest 70%
TRAIN, next 15% CALIB, newest 15% TEST) and a campaign with enough TRAIN impressions and clicks is warm, every
other one cold. Campaign ids inside the artifact are the dataset's internal ids 0..C-1 (its campaign_ids order);
`dataset_campaign_ids` (npz and meta key, serving.ads.DATASET_CAMPAIGN_IDS_KEY) maps them back to the dataset's
ids.

Warm campaigns: L2 logistic regression on their TRAIN logs. Cold campaigns:
  1. retrieve the k most similar warm campaigns by cosine similarity of creative embeddings (CLIP of the
     creative when the caller has it; any [C, E] array works, or an index object with .search());
  2. generate weights: with an OpenAI-compatible endpoint configured, a few-shot prompt shows the neighbours'
     creative text, audience, observed CTR and trained weights and asks for the new campaign's weights as
     JSON (models.ads.llm_client); without one (the default), a softmax(similarity / temperature) combination of
     the neighbours' weights;
  3. normalise: rescale the vector to the similarity-weighted norm of its neighbours (averaging shrinks
     norms; the LLM may over- or undershoot), then clip each weight to the range seen on warm campaigns;
     calibrate the intercept (1-D root finding) so that the mean predicted CTR over a reference population
     (logged requests drawn with the new campaign's audience targeting) equals what the neighbours' own warm
     models, mixed by similarity, predict there (or, with intercept_target="global", the median warm
     campaign's observed CTR): the generated model's CTR level matches the warm campaigns'. (Matching the
     neighbours' observed CTR instead lost 0.02-0.03 AUC on the simulator: their audiences differ.)
Then per model family (warm, hyper, llm) a calibrator is fitted on the CALIB logs: isotonic where there are
enough, Platt where they are thin, identity where there are too few (or one label only). Metrics (AUC, log loss,
ECE) are measured on the TEST logs, from observed clicks only.

`python -m models.ads.llm_hyper generate --dataset DIR --out OUT` writes the artifact that serving.ads.scorer
loads (without --dataset: a simulator dataset, written on first use).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.ads.features import FEATURE_NAMES, NUM_FEATURES, FeatureTables, build_profiles, pair_features
from serving.ads import DATASET_CAMPAIGN_IDS_KEY, FORMAT_VERSION, META_FILE, WEIGHTS_FILE
from serving.contract import default_limit
from models.ads.features import log_features, padded_histories
from models.ads.logs import (CALIB, MIN_TRAIN_CLICKS, MIN_TRAIN_IMPRESSIONS, SPLIT_FRACTIONS, TEST, TRAIN,
                             AdLogs, split_ad_logs)

ARTIFACT_FORMAT = "llm-hyper-ctr"
SOURCES = ("warm", "hyper", "llm", "median")
WARM, HYPER, LLM, MEDIAN = range(4)
MIN_ISOTONIC_LOGS, MIN_ISOTONIC_POSITIVES = 2000, 100
MIN_PLATT_LOGS, MIN_PLATT_EACH = 50, 3  # fewer (or fewer of either label): identity


# ----------------------------------------------------------------------------------------- warm training
def train_campaign_lr(x: np.ndarray, y: np.ndarray, campaign: np.ndarray, campaign_ids: np.ndarray,
                      l2_c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One L2 logistic regression per campaign in campaign_ids, on its rows of (x, y) -> (W [n, F], b [n])."""
    from sklearn.linear_model import LogisticRegression

    w = np.zeros((len(campaign_ids), x.shape[1]))
    b = np.zeros(len(campaign_ids))
    for j, c in enumerate(campaign_ids):  # offline training: one small fit per campaign
        m = campaign == c
        if m.sum() < 20 or len(np.unique(y[m])) < 2:
            raise ValueError(f"campaign {c}: {int(m.sum())} logs with {int(y[m].sum())} clicks; a warm campaign "
                             "needs >= 20 logs and both labels")
        lr = LogisticRegression(C=l2_c, max_iter=1000).fit(x[m], y[m])
        w[j], b[j] = lr.coef_[0], lr.intercept_[0]
    return w, b


# ------------------------------------------------------------------------------------------- retrieval
def nearest_warm(embeddings: np.ndarray, query_ids: np.ndarray, warm_ids: np.ndarray, k: int,
                 index=None) -> tuple[np.ndarray, np.ndarray]:
    """(campaign ids [Q, k], cosine similarities [Q, k]) of the k warm campaigns most similar to each query.

    index: optional object with .search(queries [Q, E], k) -> (scores, positions into warm_ids), e.g. a FAISS
    inner-product index over the normalised warm embeddings (serving.clip.ann_index).
    """
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim != 2 or emb.shape[0] <= max(int(np.max(query_ids)), int(np.max(warm_ids))):
        raise ValueError(f"embeddings must be [C, E] covering every campaign id, got shape {emb.shape}")
    if not 1 <= k <= len(warm_ids):
        raise ValueError(f"k must be in [1, {len(warm_ids)}] (the number of warm campaigns), got {k}")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    q = emb[query_ids]
    if index is not None:
        sims, pos = index.search(q.astype(np.float32), k)
        return warm_ids[np.asarray(pos)], np.asarray(sims, np.float64)
    sims = q @ emb[warm_ids].T
    pos = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return warm_ids[pos], np.take_along_axis(sims, pos, 1)


def similarity_weights(sims: np.ndarray, temperature: float) -> np.ndarray:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = (sims - sims.max(1, keepdims=True)) / temperature
    a = np.exp(z)
    return a / a.sum(1, keepdims=True)


def combine_neighbours(neighbour_w: np.ndarray, sims: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """The default generator: softmax(sim / temperature)-weighted mean of neighbour weights [Q, k, F] -> [Q, F]."""
    return np.einsum("qk,qkf->qf", similarity_weights(sims, temperature), neighbour_w)


def normalise_weights(w: np.ndarray, neighbour_w: np.ndarray, sims: np.ndarray, warm_w: np.ndarray,
                      temperature: float = 0.05) -> np.ndarray:
    """Rescale each row to its neighbours' similarity-weighted norm (averaging shrinks norms; an LLM may
    over- or undershoot), then clip each weight to the range seen on warm campaigns (a sanity bound)."""
    target = np.einsum("qk,qk->q", similarity_weights(sims, temperature), np.linalg.norm(neighbour_w, axis=2))
    w = w * (target / np.maximum(np.linalg.norm(w, axis=1), 1e-12))[:, None]
    return np.clip(w, warm_w.min(0), warm_w.max(0))


def calibrate_intercepts(ref_scores: np.ndarray, target_ctr: np.ndarray, iters: int = 60) -> np.ndarray:
    """b [Q] with mean_r sigmoid(b_q + ref_scores[q, r]) = target_ctr[q] (bisection; the mean is monotone in b)."""
    target = np.clip(np.asarray(target_ctr, np.float64), 1e-4, 1 - 1e-4)
    lo, hi = np.full(len(target), -20.0), np.full(len(target), 20.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        mean = (1.0 / (1.0 + np.exp(-(mid[:, None] + ref_scores)))).mean(1)
        up = mean < target
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    return (lo + hi) / 2


# ------------------------------------------------------------------------------------------------ prompt
_FEATURE_HELP = {
    "leaf_affinity": "share of the user's recent history in the ad item's leaf category",
    "top_affinity": "share in the ad item's top category",
    "brand_affinity": "share on the ad item's brand",
    "item_interacted": "share on the advertised item itself",
    "intent_leaf": "1 if the user's newest event is in the ad item's leaf category",
    "intent_top": "1 if the user's newest event is in the ad item's top category",
    "price_match": "exp(-|log ad price - user's mean log price|)",
    "audience_category": "share of the history in the campaign's target categories",
    "audience_price": "share of the history in the campaign's target price buckets",
    "carted_leaf": "share of add-to-cart/purchase events in the ad item's leaf category",
    "activity": "log(1 + number of events) / log(51)",
}


def build_prompt(target: dict, neighbours: list[dict], feature_names=FEATURE_NAMES) -> list[dict]:
    """Few-shot chat messages in the paper's shape: task, features, k solved examples, the new campaign.

    target: {"text", "audience"}; neighbours: [{"text", "audience", "similarity", "ctr", "weights" [F]}].
    """
    feats = "\n".join(f"- {n}: {_FEATURE_HELP.get(n, n)}" for n in feature_names)
    shots = []
    for i, nb in enumerate(neighbours, 1):
        weights = {n: round(float(v), 4) for n, v in zip(feature_names, nb["weights"])}
        shots.append(f"Example {i} (creative similarity {nb['similarity']:.3f})\n"
                     f"Creative: {nb['text']}\nAudience: {nb['audience']}\n"
                     f"Observed CTR: {nb['ctr']:.4f}\nWeights: {json.dumps({'weights': weights})}")
    system = ("You are an expert in online advertising and click-through-rate (CTR) modelling. You write the "
              "weights of per-campaign logistic-regression CTR models.")
    user = ("Task: each ad campaign has a linear CTR model pCTR = sigmoid(b + sum_i w_i * x_i) over the user x "
            "campaign features below (the intercept b is set later). A new campaign has no click logs yet. "
            "Infer its weights from the most similar past campaigns, whose trained weights are shown.\n\n"
            f"Features:\n{feats}\n\n" + "\n\n".join(shots) +
            f"\n\nNew campaign\nCreative: {target['text']}\nAudience: {target['audience']}\n\n"
            'Answer with JSON only, exactly {"weights": {"<feature name>": <number>, ...}} with every feature '
            "listed above and nothing else.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def describe_audience(campaigns, c: int, top_names: list[str] | None = None) -> str:
    tops = np.flatnonzero(campaigns.audience_top[c])
    names = [top_names[t] if top_names else f"category {t}" for t in tops]
    buckets = np.flatnonzero(campaigns.audience_price[c])
    buckets = buckets[buckets > 0]  # bucket 0 (unknown price) is never excluded by a price target
    price = f"price buckets {int(buckets.min())}-{int(buckets.max())}" if len(buckets) else "any price"
    return f"categories {', '.join(names)}; {price}"


# ------------------------------------------------------------------------------------------ calibration
def fit_calibrator(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Isotonic with enough held-out logs, Platt when they are thin, identity (Platt a=1, b=0: the model's own
    sigmoid) when there are fewer than MIN_PLATT_LOGS or fewer than MIN_PLATT_EACH of either label; a dict of
    plain arrays for the artifact."""
    from serving.calibration import IsotonicCalibrator, PlattCalibrator

    labels = np.asarray(labels)
    n, pos = int(len(labels)), int(labels.sum())
    if n >= MIN_ISOTONIC_LOGS and pos >= MIN_ISOTONIC_POSITIVES and n - pos >= MIN_ISOTONIC_POSITIVES:
        iso = IsotonicCalibrator.fit(logits, labels)
        return {"kind": "isotonic", "x": iso.x, "y": iso.y, "n_logs": n}
    if n < MIN_PLATT_LOGS or min(pos, n - pos) < MIN_PLATT_EACH:
        return {"kind": "platt", "a": 1.0, "b": 0.0, "n_logs": n, "identity": True}
    platt = PlattCalibrator.fit(logits, labels)
    return {"kind": "platt", "a": platt.a, "b": platt.b, "n_logs": n}


def apply_calibrator(cal: dict, logits: np.ndarray) -> np.ndarray:
    if cal["kind"] == "isotonic":
        return np.interp(logits, cal["x"], cal["y"])
    if cal["kind"] == "platt":
        return 1.0 / (1.0 + np.exp(-(cal["a"] * logits + cal["b"])))
    raise ValueError(f"unknown calibrator kind {cal['kind']!r}")


def click_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """AUC, log loss and ECE (15 bins) of predictions against observed clicks; AUC is None with one label only,
    everything None without logs."""
    from sklearn.metrics import log_loss, roc_auc_score

    from serving.calibration import expected_calibration_error

    y = np.asarray(labels, np.int64)
    n = int(len(y))
    if n == 0:
        return {"logs": 0, "clicks": 0, "auc": None, "log_loss": None, "ece_15": None}
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    return {"logs": n, "clicks": int(y.sum()),
            "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < n else None,
            "log_loss": float(log_loss(y, p, labels=[0, 1])), "ece_15": float(expected_calibration_error(p, y))}


# ------------------------------------------------------------------------------------------- generation
@dataclass
class CtrModels:
    """Linear CTR models for every campaign, and how the cold ones were made."""

    weights: np.ndarray  # [C, F]
    bias: np.ndarray  # [C]
    source: np.ndarray  # int64 [C] into SOURCES
    neighbours: dict[int, list[int]] = field(default_factory=dict)
    similarities: dict[int, list[float]] = field(default_factory=dict)
    generation_s: float = 0.0  # wall time of the hypernetwork step for all cold campaigns
    llm_failures: dict[int, str] = field(default_factory=dict)


@dataclass
class Prepared:
    """Everything the generation and the evaluation share: the tables, features of all logs, warm models."""

    data: object  # data.build_data.BuildData
    campaigns: AdLogs
    tables: FeatureTables
    x: np.ndarray  # [M, F] features of every logged ad impression
    warm_w: np.ndarray  # [C_warm, F]
    warm_b: np.ndarray
    warm_ctr: np.ndarray  # [C_warm] observed CTR of each warm campaign's training logs
    ref_profiles: object  # a pool of logged requests (warm training logs) for intercept calibration
    ref_top: np.ndarray  # [R] each pooled request's dominant top category (for audience targeting)


def prepare(data, logs: AdLogs | None = None, reference_pool: int = 20_000, seed: int = 0) -> Prepared:
    """Features of every ad impression of `data` and the warm models on the TRAIN logs. logs: the split and
    warm set (default: models.ads.logs.split_ad_logs(data.campaigns, seed=seed))."""
    logs = split_ad_logs(data.campaigns, seed=seed) if logs is None else logs
    warm = logs.warm_ids
    if len(warm) == 0:
        rule = logs.rule
        raise ValueError(f"no warm campaign: none of the {logs.num_campaigns} campaigns has >= "
                         f"{rule['min_train_impressions']} TRAIN impressions (the oldest "
                         f"{100 * rule['fractions'][0]:.0f}% of the ad log) with >= {rule['min_train_clicks']} clicks "
                         f"and non-clicks; cold-start weights need warm campaigns to learn from "
                         f"(TRAIN: {logs.counts()['train']})")
    tables = FeatureTables.from_data(data)
    x = log_features(data, logs, tables, np.arange(len(logs.log_click)))
    rows = logs.logs(TRAIN, warm)
    warm_w, warm_b = train_campaign_lr(x[rows], logs.log_click[rows], logs.log_campaign[rows], warm)
    n_c = logs.num_campaigns
    clicks = np.bincount(logs.log_campaign[rows], weights=logs.log_click[rows], minlength=n_c)
    ctr = clicks[warm] / np.bincount(logs.log_campaign[rows], minlength=n_c)[warm]
    pool = np.random.default_rng([seed, 11]).choice(rows, size=min(reference_pool, len(rows)), replace=False)
    prof = build_profiles(tables, *padded_histories(data, logs.log_user[pool], logs.log_time[pool]))
    return Prepared(data, logs, tables, x, warm_w, warm_b, ctr, prof, prof.top.argmax(1))


def reference_features(prep: Prepared, ids: np.ndarray, per_campaign: int = 400, seed: int = 0) -> np.ndarray:
    """[Q, R, F] features of each campaign against the requests it would be shown to: half from pooled
    requests whose dominant top category is in its target audience, half from any pooled request (the
    same targeting mix as the ad logs)."""
    rng = np.random.default_rng([seed, 13])
    cs = prep.campaigns
    n_pool, half = len(prep.ref_top), per_campaign // 2
    idx = np.empty((len(ids), per_campaign), np.int64)
    for q, c in enumerate(ids):  # offline, once per campaign
        inside = np.flatnonzero(cs.audience_top[c][prep.ref_top])
        idx[q, :half] = rng.choice(inside if len(inside) else n_pool, size=half)
        idx[q, half:] = rng.integers(0, n_pool, size=per_campaign - half)
    return pair_features(prep.tables, prep.ref_profiles, idx, np.asarray(ids)[:, None])


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def generate_cold(prep: Prepared, embeddings: np.ndarray, k: int = 10, temperature: float = 0.1,
                  client=None, intercept_target: str = "neighbours", index=None,
                  top_names: list[str] | None = None) -> CtrModels:
    """Warm models for warm campaigns, hypernetwork (or LLM when `client` is given) weights for cold ones."""
    if intercept_target not in ("neighbours", "global"):
        raise ValueError(f"intercept_target must be 'neighbours' or 'global', got {intercept_target!r}")
    cs = prep.campaigns
    top_names = list(prep.data.catalog.top_names) if top_names is None else top_names
    warm, cold = cs.warm_ids, cs.cold_ids
    n_c = cs.num_campaigns
    weights, bias = np.zeros((n_c, NUM_FEATURES)), np.zeros(n_c)
    source = np.full(n_c, WARM, np.int64)
    weights[warm], bias[warm] = prep.warm_w, prep.warm_b
    row_of = {int(c): j for j, c in enumerate(warm)}
    out = CtrModels(weights, bias, source)
    if len(cold) == 0:
        return out
    t0 = time.perf_counter()
    nb_ids, sims = nearest_warm(embeddings, cold, warm, k, index=index)
    nb_rows = np.vectorize(row_of.__getitem__)(nb_ids)
    nb_w = prep.warm_w[nb_rows]  # [Q, k, F]
    att = similarity_weights(sims, temperature)
    mix_w, mix_b = combine_neighbours(nb_w, sims, temperature), np.einsum("qk,qk->q", att, prep.warm_b[nb_rows])
    gen = mix_w.copy()
    src = np.full(len(cold), HYPER)
    if client is not None:
        from models.ads.llm_client import LLMError, parse_weights

        for q, c in enumerate(cold):  # one chat call per new campaign, offline
            nbs = [{"text": cs.text[n], "audience": describe_audience(cs, n, top_names), "similarity": s,
                    "ctr": float(prep.warm_ctr[row_of[int(n)]]), "weights": prep.warm_w[row_of[int(n)]]}
                   for n, s in zip(nb_ids[q], sims[q])]
            msgs = build_prompt({"text": cs.text[c], "audience": describe_audience(cs, c, top_names)}, nbs)
            try:
                gen[q] = parse_weights(client.chat(msgs), FEATURE_NAMES)
                src[q] = LLM
            except LLMError as e:  # keep the retrieval-weighted weights; the artifact records why
                out.llm_failures[int(c)] = str(e)
    gen = normalise_weights(gen, nb_w, sims, prep.warm_w, temperature)
    ref = reference_features(prep, cold)  # [Q, R, F]
    if intercept_target == "neighbours":
        # The CTR level the neighbours' own models (mixed by similarity) predict for this campaign's audience.
        target = _sigmoid(np.einsum("qrf,qf->qr", ref, mix_w) + mix_b[:, None]).mean(1)
    else:
        target = np.full(len(cold), np.median(prep.warm_ctr))
    b = calibrate_intercepts(np.einsum("qrf,qf->qr", ref, gen), target)
    out.generation_s = time.perf_counter() - t0
    weights[cold], bias[cold], source[cold] = gen, b, src
    out.neighbours = {int(c): [int(n) for n in nb_ids[q]] for q, c in enumerate(cold)}
    out.similarities = {int(c): [float(s) for s in sims[q]] for q, c in enumerate(cold)}
    return out


def select_hyperparameters(prep: Prepared, embeddings: np.ndarray, ks=(5, 10, 20),
                           temperatures=(0.02, 0.05, 0.1, 0.2)) -> tuple[int, float, dict]:
    """(k, temperature) by leave-one-out on WARM campaigns only: each warm campaign in turn is treated as
    new, its weights generated from the other warm campaigns, and scored by AUC on its CALIB logs. Cold
    campaigns and TEST logs are never touched, so the choice does not peek at the evaluation."""
    from sklearn.metrics import roc_auc_score

    cs = prep.campaigns
    warm = cs.warm_ids
    row_of = {int(c): j for j, c in enumerate(warm)}
    kmax = max(ks)
    if kmax + 1 > len(warm):
        raise ValueError(f"ks: max k {kmax} needs more than {len(warm)} warm campaigns")
    rows = cs.logs(CALIB, warm)
    y, camp = cs.log_click[rows], cs.log_campaign[rows]
    if len(np.unique(y)) < 2:
        raise ValueError(f"leave-one-out selection needs CALIB logs of warm campaigns with both labels; got "
                         f"{len(y)} logs, {int(y.sum())} clicks")
    ids, sims = nearest_warm(embeddings, warm, warm, kmax + 1)
    keep = ids != warm[:, None]  # drop the campaign itself
    order = np.argsort(~keep, axis=1, kind="stable")[:, :kmax]
    ids, sims = np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)
    ref = reference_features(prep, warm)
    scores = {}
    for k in ks:
        nb_rows = np.vectorize(row_of.__getitem__)(ids[:, :k])
        nb_w = prep.warm_w[nb_rows]
        for t in temperatures:
            mix_w = combine_neighbours(nb_w, sims[:, :k], t)
            mix_b = np.einsum("qk,qk->q", similarity_weights(sims[:, :k], t), prep.warm_b[nb_rows])
            w = normalise_weights(mix_w, nb_w, sims[:, :k], prep.warm_w, t)
            target = _sigmoid(np.einsum("qrf,qf->qr", ref, mix_w) + mix_b[:, None]).mean(1)
            b = calibrate_intercepts(np.einsum("qrf,qf->qr", ref, w), target)
            r = np.vectorize(row_of.__getitem__)(camp)
            scores[(k, t)] = float(roc_auc_score(y, np.einsum("nf,nf->n", prep.x[rows], w[r]) + b[r]))
    best = max(scores, key=scores.get)
    return best[0], best[1], {f"k={k},T={t}": v for (k, t), v in scores.items()}


def median_models(prep: Prepared) -> tuple[np.ndarray, float]:
    """LR-cold baseline: the element-wise median of the warm weights and intercepts."""
    return np.median(prep.warm_w, 0), float(np.median(prep.warm_b))


def log_logits(prep: Prepared, weights: np.ndarray, bias: np.ndarray, rows: np.ndarray) -> np.ndarray:
    c = prep.campaigns.log_campaign[rows]
    return np.einsum("nf,nf->n", prep.x[rows], weights[c]) + bias[c]


def fit_family_calibrators(prep: Prepared, models: CtrModels) -> tuple[dict, dict]:
    """Per source family present: a calibrator fit on its CALIB logs, and AUC / log loss / ECE on its TEST logs
    before (sigmoid of the logit) and after calibration."""
    cs = prep.campaigns
    cals, report = {}, {}
    for s in np.unique(models.source):
        ids = np.flatnonzero(models.source == s)
        cal_rows, test_rows = cs.logs(CALIB, ids), cs.logs(TEST, ids)
        cal = fit_calibrator(log_logits(prep, models.weights, models.bias, cal_rows), cs.log_click[cal_rows])
        cals[SOURCES[s]] = cal
        z = log_logits(prep, models.weights, models.bias, test_rows)
        y = cs.log_click[test_rows]
        report[SOURCES[s]] = {"campaigns": int(len(ids)), "calibrator": cal["kind"] + (
                                  " (identity)" if cal.get("identity") else ""),
                              "calib_logs": int(len(cal_rows)), "test_logs": int(len(test_rows)),
                              "before": click_metrics(_sigmoid(z), y),
                              "after": click_metrics(apply_calibrator(cal, z), y)}
    return cals, report


def served_probabilities(prep: Prepared, models: CtrModels, calibrators: dict, rows: np.ndarray) -> np.ndarray:
    """Calibrated pCTR of logged impressions `rows`, as the scorer serves them (each campaign's family)."""
    z = log_logits(prep, models.weights, models.bias, rows)
    src = models.source[prep.campaigns.log_campaign[rows]]
    p = np.empty_like(z)
    for s in np.unique(src):
        m = src == s
        p[m] = apply_calibrator(calibrators[SOURCES[s]], z[m])
    return p


def split_metrics(prep: Prepared, models: CtrModels, calibrators: dict) -> dict:
    """Served pCTR against observed clicks on the TEST logs: all campaigns, the warm ones, the cold ones
    (generated weights: hyper and llm), and the cold ones made cold by holdout_cold."""
    cs = prep.campaigns
    groups = {"all": np.arange(cs.num_campaigns), "warm": cs.warm_ids, "cold": cs.cold_ids,
              "held_out_cold": np.flatnonzero(cs.held_out)}
    out = {}
    for name, ids in groups.items():
        rows = cs.logs(TEST, ids)
        out[name] = {"campaigns": int(len(ids)),
                     **click_metrics(served_probabilities(prep, models, calibrators, rows), cs.log_click[rows])}
    return out


# -------------------------------------------------------------------------------------------- artifact
def save_artifact(out_dir: Path, tables: FeatureTables, models: CtrModels, calibrators: dict, meta_extra: dict,
                  max_campaigns: int = default_limit("max_campaigns"), campaign_ids: np.ndarray | None = None,
                  event_names: tuple[str, ...] | None = None) -> dict:
    """DIR/ctr_weights.npz (what serving reads) + DIR/ctr_meta.json (version, features, per-campaign weights,
    sources, calibrators, provenance). The version is a hash of the npz contents.

    Campaign c of the artifact is the dataset's campaign campaign_ids[c] (npz and meta key `dataset_campaign_ids`,
    int64; default 0..C-1); event_names: the behaviour vocabulary (code i+1 = event_names[i]) requests use."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_c = len(models.source)
    ids = np.arange(n_c, dtype=np.int64) if campaign_ids is None else np.asarray(campaign_ids, np.int64)
    if ids.shape != (n_c,) or len(np.unique(ids)) != n_c:
        raise ValueError(f"campaign_ids must be {n_c} distinct ids, got shape {ids.shape}")
    if event_names is None:
        from serving.ads.features import DEFAULT_EVENTS

        event_names = DEFAULT_EVENTS
    if len(event_names) + 1 != tables.num_behaviors:
        raise ValueError(f"{len(event_names)} event names but the tables weigh {tables.num_behaviors - 1} behaviours")
    arrays = {f"table_{k}": v for k, v in tables.to_arrays().items()}
    arrays.update(weights=models.weights.astype(np.float32), bias=models.bias.astype(np.float32),
                  source=models.source.astype(np.int64), max_campaigns=np.int64(max_campaigns))
    arrays[DATASET_CAMPAIGN_IDS_KEY] = ids
    for name, cal in calibrators.items():
        if cal["kind"] == "isotonic":
            arrays[f"cal_{name}_x"], arrays[f"cal_{name}_y"] = cal["x"], cal["y"]
        else:
            arrays[f"cal_{name}_ab"] = np.array([cal["a"], cal["b"]])
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    h.update(json.dumps(list(event_names)).encode())
    version = f"{FORMAT_VERSION}.{h.hexdigest()[:12]}"
    arrays["version"] = np.array(version)
    np.savez(out_dir / WEIGHTS_FILE, **arrays)
    meta = {"format": ARTIFACT_FORMAT, "format_version": FORMAT_VERSION, "version": version,
            "feature_names": list(FEATURE_NAMES), "sources": list(SOURCES), "max_campaigns": max_campaigns,
            "event_names": list(event_names), DATASET_CAMPAIGN_IDS_KEY: ids.tolist(),
            "calibrators": {n: {"kind": c["kind"], "n_logs": c["n_logs"], **({"identity": True} if c.get("identity")
                                                                               else {})}
                            for n, c in calibrators.items()},
            "campaigns": [{"id": c, "campaign_id": int(ids[c]), "source": SOURCES[int(models.source[c])],
                           "weights": [round(float(v), 6) for v in models.weights[c]],
                           "bias": round(float(models.bias[c]), 6),
                           **({"neighbours": models.neighbours[c], "similarities": models.similarities[c]}
                              if c in models.neighbours else {}),
                           **({"llm_error": models.llm_failures[c]} if c in models.llm_failures else {})}
                          for c in range(n_c)],
            **meta_extra}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


# ----------------------------------------------------------------------------------------------- inputs
EMBEDDING_CHOICES = ("minilm-text", "clip", "attributes")


CLIP_EMBEDDING_DESC = "CLIP of the creative image + text, averaged (the text alone for a creative without an image)"


def clip_creative_embeddings(embedder, campaigns) -> np.ndarray:
    """float64 [C, D] creative embeddings with a CLIP embedder (models.clip.model.ClipEmbedder): for a campaign
    with an image (campaigns.images: its own, else its promoted item's; loaded by data.images, the rule the
    items' images follow) the normalised mean of its image and text embeddings, for one without the text
    embedding alone."""
    from data.images import DEFAULT_SIZE, load_images

    emb = np.asarray(embedder.embed_texts(list(campaigns.text)), np.float64)
    size = int(getattr(getattr(getattr(embedder, "model", None), "config", None), "image_resolution", DEFAULT_SIZE))
    images, has = load_images(campaigns.images, size)
    if has.any():
        emb[has] = (emb[has] + np.asarray(embedder.embed_images(images[has]), np.float64)) / 2
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def creative_embeddings(data, kind: str = "minilm-text", path: Path | None = None,
                        cache_dir: Path | None = None, clip_dir: Path | None = None) -> tuple[np.ndarray, str]:
    """[C, E] creative embeddings of data.campaigns and a description of where they came from.

    path: a .npy [C, E] file (rows in the order of the dataset's campaign ids) overrides `kind`.
    minilm-text: MiniLM sentence embeddings of the creative text (models.text_embedding).
    clip: a trained CLIP model dir (models.clip.model.ClipEmbedder, `clip_dir`) embeds each creative's image and
    text: clip_creative_embeddings.
    attributes: one-hot of the promoted item's top/leaf category and brand, and the targeted top categories (no
    text model; a weak, honest fallback).
    """
    cs = data.campaigns
    if path is not None:
        emb = np.load(path)
        if emb.ndim != 2 or emb.shape[0] != cs.num_campaigns:
            raise ValueError(f"embeddings file {path}: expected [{cs.num_campaigns}, E], got {emb.shape}")
        return emb.astype(np.float64), f"file {path}"
    if kind == "minilm-text":
        from models.text_embedding import embed_texts

        cache = None if cache_dir is None else Path(cache_dir) / "campaign_text_minilm.npz"
        return embed_texts(list(cs.text), cache_path=cache, num_threads=1).astype(np.float64), \
            "MiniLM-L6 text embedding of the creative text (not CLIP)"
    if kind == "clip":
        if clip_dir is None:
            raise ValueError("embedding kind 'clip' needs clip_dir (a model dir from models.clip.train)")
        from models.clip.model import ClipEmbedder

        return clip_creative_embeddings(ClipEmbedder.load(clip_dir), cs), f"{CLIP_EMBEDDING_DESC} ({clip_dir})"
    if kind == "attributes":
        cat = data.catalog
        it = np.asarray(cs.item, np.int64)
        has = (it > 0)[:, None]
        parts = [np.eye(cat.num_top_categories)[cat.top_category[it]] * has,
                 np.eye(cat.num_leaf_categories)[cat.leaf_category[it]] * has,
                 np.eye(cat.num_brands)[cat.brand[it]] * has, np.asarray(cs.audience_top, np.float64)]
        return np.concatenate(parts, 1), "one-hot item attributes (top, leaf, brand) and targeted categories; no copy"
    raise ValueError(f"embedding kind must be one of {EMBEDDING_CHOICES}, got {kind!r}")


DEFAULT_DATASET_ROOT = Path("artifacts/datasets")


def simulator_dataset(seed: int = 0, root: Path = DEFAULT_DATASET_ROOT) -> Path:
    """ROOT/simulator-seed{seed}: the simulator's dataset (data.simulator.write_dataset), written on first use."""
    out = Path(root) / f"simulator-seed{seed}"
    if not (out / "dataset.json").is_file():
        from data.simulator import SimConfig, simulate, write_dataset

        write_dataset(simulate(SimConfig(seed=seed)), out, seed=seed)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="train warm models, generate cold weights, fit calibrators, write artifact")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--dataset", type=Path, help="dataset directory (docs/dataset.md) with campaigns and "
                                                f"ad_impressions; default: {DEFAULT_DATASET_ROOT}/simulator-seedS, "
                                                "written from the simulator when missing")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--holdout-cold", type=float, default=0.0,
                   help="make this fraction of the warm campaigns cold (their TRAIN logs unused) to exercise and "
                        "measure cold start; 0 (default) for an artifact to serve")
    g.add_argument("--min-train-impressions", type=int, default=MIN_TRAIN_IMPRESSIONS)
    g.add_argument("--min-train-clicks", type=int, default=MIN_TRAIN_CLICKS)
    g.add_argument("--k", type=int, help="neighbours per cold campaign (default: leave-one-out selection)")
    g.add_argument("--temperature", type=float, help="softmax temperature (default: leave-one-out selection)")
    g.add_argument("--embedding", choices=EMBEDDING_CHOICES, default="minilm-text")
    g.add_argument("--embeddings-file", type=Path, help=".npy [C, E] creative embeddings (overrides --embedding)")
    g.add_argument("--clip-dir", type=Path, help="trained CLIP model dir, for --embedding clip")
    g.add_argument("--endpoint", help="OpenAI-compatible base URL; without it the retrieval-weighted generator")
    g.add_argument("--model", default="gpt-4o-mini")
    g.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)

    from data.build_data import load_build_data

    directory = args.dataset if args.dataset is not None else simulator_dataset(args.seed)
    data = load_build_data(directory)
    emb, emb_desc = creative_embeddings(data, args.embedding, args.embeddings_file, cache_dir=Path("artifacts"),
                                        clip_dir=args.clip_dir)
    client = None
    if args.endpoint:
        from models.ads.llm_client import ChatClient

        client = ChatClient(args.endpoint, args.model, timeout_s=args.timeout)
    meta = generate_artifact(data, emb, args.out, emb_desc, seed=args.seed, k=args.k, temperature=args.temperature,
                             client=client, holdout_cold=args.holdout_cold,
                             min_train_impressions=args.min_train_impressions, min_train_clicks=args.min_train_clicks,
                             extra={"endpoint": args.endpoint, "llm_model": args.model if client else None})
    print(json.dumps(meta["summary"], indent=1))


def choose_hyperparameters(prep: Prepared, emb: np.ndarray, k: int | None = None, temperature: float | None = None
                           ) -> tuple[int | None, float | None, dict | None]:
    """(k, temperature, leave-one-out scores or None): the given values, else chosen by leave-one-out on the warm
    campaigns (select_hyperparameters) among k in (5, 10, 20) (those below the number of warm campaigns) and
    T in (0.02, 0.05, 0.1, 0.2). Too few warm campaigns (< 2) or CALIB logs without both labels: the defaults
    k = min(10, warm campaigns), T = 0.1. No cold campaign: (None, None, None)."""
    cs = prep.campaigns
    n_warm = len(cs.warm_ids)
    if len(cs.cold_ids) == 0:
        return None, None, None
    if k is not None and temperature is not None:
        return min(k, n_warm), temperature, None
    ks = tuple(x for x in ((k,) if k else (5, 10, 20)) if x < n_warm) or ((n_warm - 1,) if n_warm > 1 else ())
    temps = (temperature,) if temperature else (0.02, 0.05, 0.1, 0.2)
    y = cs.log_click[cs.logs(CALIB, cs.warm_ids)]
    if not ks or len(np.unique(y)) < 2:
        return min(k or 10, n_warm), temperature or 0.1, None
    return select_hyperparameters(prep, emb, ks=ks, temperatures=temps)


def generate_artifact(data, emb, out: Path, emb_desc: str | None = None, *, seed: int = 0, k: int | None = None,
                      temperature: float | None = None, client=None, holdout_cold: float = 0.0,
                      min_train_impressions: int = MIN_TRAIN_IMPRESSIONS, min_train_clicks: int = MIN_TRAIN_CLICKS,
                      fractions=SPLIT_FRACTIONS, max_campaigns: int = default_limit("max_campaigns"),
                      extra: dict | None = None) -> dict:
    """From a dataset (data.build_data.BuildData with campaigns) and creative embeddings: the time split and
    warm set (models.ads.logs), warm LR, cold-start weights (retrieval-weighted, or LLM with `client`),
    per-family calibrators -> the versioned artifact in `out` that serving.ads.scorer.CtrScorer serves. Returns
    its metadata plus a summary (with the TEST metrics).

    emb: float [C, D] creative embeddings, row c = internal campaign c (data.campaigns order), or a CLIP
    embedder (models.clip.model.ClipEmbedder: anything with embed_texts / embed_images), which embeds the
    creatives with clip_creative_embeddings. emb_desc: where the embeddings came from (for the metadata)."""
    if data.campaigns is None:
        raise ValueError(f"dataset {data.name!r} has no campaigns (campaigns + ad_impressions): no ads artifact")
    if hasattr(emb, "embed_texts"):
        emb, emb_desc = clip_creative_embeddings(emb, data.campaigns), emb_desc or CLIP_EMBEDDING_DESC
    emb = np.asarray(emb, np.float64)
    if emb.ndim != 2 or emb.shape[0] != data.campaigns.num_campaigns:
        raise ValueError(f"emb must be [{data.campaigns.num_campaigns}, D] (one row per campaign), got {emb.shape}")
    emb_desc = emb_desc or f"given [{emb.shape[0]}, {emb.shape[1]}] creative embeddings"
    logs = split_ad_logs(data.campaigns, fractions, min_train_impressions, min_train_clicks, holdout_cold, seed)
    prep = prepare(data, logs, seed=seed)
    k, temperature, loo = choose_hyperparameters(prep, emb, k, temperature)
    models = generate_cold(prep, emb, k=k or 1, temperature=temperature or 0.1, client=client)
    cals, report = fit_family_calibrators(prep, models)
    metrics = split_metrics(prep, models, cals)
    split = {**logs.rule, "counts": logs.counts(), "warm_campaigns": int(logs.warm.sum()),
             "cold_campaigns": int((~logs.warm).sum()), "held_out_cold": int(logs.held_out.sum())}
    meta = save_artifact(out, prep.tables, models, cals, {
        **(extra or {}), "dataset": data.name, "seed": seed, "embedding": emb_desc, "k": k,
        "temperature": temperature, "selection_loo_auc": loo, "generator": "llm" if client else "retrieval-weighted",
        "generation_s": models.generation_s, "log_split": split, "calibration_report": report,
        "test_metrics": metrics}, max_campaigns=max_campaigns, campaign_ids=logs.campaign_ids,
        event_names=tuple(data.meta.events))

    def short(m):
        return {key: (None if m[key] is None else round(m[key], 4)) for key in ("auc", "log_loss", "ece_15")} | {
            "campaigns": m["campaigns"], "test_logs": m["logs"]}

    meta["summary"] = {
        "version": meta["version"], "out": str(out), "dataset": data.name, "embedding": emb_desc,
        "k": k, "temperature": temperature,
        "sources": {s: int((models.source == i).sum()) for i, s in enumerate(SOURCES)},
        "log_split": {"cut_times": list(logs.cut_times), **{n: c["impressions"] for n, c in logs.counts().items()}},
        "test": {name: short(m) for name, m in metrics.items()},
        "calibration": {s: {"calibrator": r["calibrator"],
                            "ece_before": None if r["before"]["ece_15"] is None else round(r["before"]["ece_15"], 4),
                            "ece_after": None if r["after"]["ece_15"] is None else round(r["after"]["ece_15"], 4)}
                        for s, r in report.items()}}
    return meta


if __name__ == "__main__":
    main()
