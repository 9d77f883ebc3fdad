"""Cold-start CTR evaluation in the shape of the LLM-HYPER paper's offline table, on the simulator.

Every row scores the COLD campaigns only (they had no logs when their weights were made):
  LR-warm   upper bound: L2 LR trained on the cold campaigns' own training logs (unavailable in production)
  LR-cold   element-wise median of the warm campaigns' weights and intercepts
  Hyper     retrieval-weighted hypernetwork (k nearest warm campaigns by creative embedding), normalised,
            intercept calibrated to the neighbours' CTR (and a variant calibrated to the global warm median)
  LLM       the same with weights written by an OpenAI-compatible endpoint (only with --endpoint)
Metrics on held-out TEST logs: AUC over all cold-campaign impressions; NDCG@5/10 per user over the cold
campaigns (each sampled request scores every cold campaign; relevance = clicks drawn from the hidden model,
averaged over 5 draws, users with >= 1 click); ECE (15 bins) and log loss of sigmoid(logit) before and of
the family calibrator (fit on CALIB logs) after. Latency: CtrScorer.score() for 100 campaigns.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from data.campaigns import CALIB, TEST, true_campaign_ctr
from serving.calibration import ctr_metrics
from serving.ads.features import build_profiles, pair_features
from models.ads.features import padded_histories
from models.ads import llm_hyper as lh


def ndcg_at(scores: np.ndarray, rel: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k per row of [R, C] scores against [R, C] relevance; NaN for rows without relevant items."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (np.take_along_axis(rel, order, 1) * disc).sum(1)
    ideal = (-np.sort(-rel, axis=1)[:, :k] * disc).sum(1)
    return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1), np.nan)


def _row(name, prep, cold, w, b, ndcg_x, rel_draws) -> dict:
    """Metrics of one linear model family (w [C, F], b [C] filled for cold campaigns)."""
    from sklearn.metrics import roc_auc_score

    cs = prep.campaigns
    test, calib = cs.logs(TEST, cold), cs.logs(CALIB, cold)
    z_test = lh.log_logits(prep, w, b, test)
    y = cs.log_click[test]
    cal = lh.fit_calibrator(lh.log_logits(prep, w, b, calib), cs.log_click[calib])
    scores = np.einsum("rqf,qf->rq", ndcg_x, w[cold]) + b[cold][None, :]
    nd = {k: float(np.nanmean([np.nanmean(ndcg_at(scores, r, k)) for r in rel_draws])) for k in (5, 10)}
    before, after = ctr_metrics(lh._sigmoid(z_test), y), ctr_metrics(lh.apply_calibrator(cal, z_test), y)
    return {"model": name, "auc": float(roc_auc_score(y, z_test)), "ndcg5": nd[5], "ndcg10": nd[10],
            "calibrator": cal["kind"], "ece_before": before["ece_15"], "ece_after": after["ece_15"],
            "logloss_before": before["log_loss"], "logloss_after": after["log_loss"]}


def evaluate(seed: int = 0, k: int | None = None, temperature: float | None = None, embedding: str = "minilm-text",
             embeddings_file: Path | None = None, endpoint: str | None = None, llm_model: str = "gpt-4o-mini",
             ndcg_users: int = 400, latency_requests: int = 1000, cache_dir: Path | None = None,
             clip_dir: Path | None = None) -> dict:
    from serving.ads.scorer import CtrScorer

    world, cs = lh.build_world(seed)
    t0 = time.perf_counter()
    prep = lh.prepare(world, cs)
    prep_s = time.perf_counter() - t0
    emb, emb_desc = lh.creative_embeddings(world, cs, embedding, embeddings_file, cache_dir=cache_dir,
                                           clip_dir=clip_dir)
    cold = cs.cold_ids
    n_c = cs.num_campaigns
    loo = None
    if k is None or temperature is None:  # chosen on warm campaigns only (leave-one-out), never on TEST
        k_sel, t_sel, loo = lh.select_hyperparameters(prep, emb, ks=(k,) if k else (5, 10, 20),
                                                      temperatures=(temperature,) if temperature else
                                                      (0.02, 0.05, 0.1, 0.2))
        k, temperature = k_sel, t_sel

    # NDCG requests: distinct users from the cold campaigns' TEST logs; every cold campaign scored for each.
    rng = np.random.default_rng(seed + 1)
    test_rows = cs.logs(TEST, cold)
    _, first = np.unique(cs.log_user[test_rows], return_index=True)
    req = rng.choice(test_rows[first], size=min(ndcg_users, len(first)), replace=False)
    prof = build_profiles(prep.tables, *padded_histories(world, cs.log_user[req], cs.log_time[req]))
    ndcg_x = pair_features(prep.tables, prof, np.arange(len(req))[:, None], cold[None, :])  # [R, Q, F]
    uu, tt = np.repeat(cs.log_user[req], len(cold)), np.repeat(cs.log_time[req], len(cold))
    true_p = true_campaign_ctr(world, cs.item, cs.true_coef, cs.true_quality, cs.audience_top, cs.audience_price,
                               uu, tt, np.tile(cold, len(req))).reshape(len(req), len(cold))
    rel_draws = [(rng.random(true_p.shape) < true_p).astype(np.float64) for _ in range(5)]

    rows = []
    # LR-warm upper bound: the cold campaigns' own training logs.
    from data.campaigns import TRAIN

    tr = cs.logs(TRAIN, cold)
    w_up, b_up = np.zeros((n_c, prep.x.shape[1])), np.zeros(n_c)
    w_up[cold], b_up[cold] = lh.train_campaign_lr(prep.x[tr], cs.log_click[tr], cs.log_campaign[tr], cold)
    rows.append(_row("LR-warm (upper bound)", prep, cold, w_up, b_up, ndcg_x, rel_draws))
    w_med, b_med = lh.median_models(prep)
    rows.append(_row("LR-cold (median weights)", prep, cold, np.tile(w_med, (n_c, 1)), np.full(n_c, b_med),
                     ndcg_x, rel_draws))
    hyper = lh.generate_cold(prep, emb, k=k, temperature=temperature)
    rows.append(_row(f"Hyper, retrieval-weighted (k={k})", prep, cold, hyper.weights, hyper.bias, ndcg_x, rel_draws))
    rows[-1]["generation_ms_per_campaign"] = 1e3 * hyper.generation_s / len(cold)
    glob = lh.generate_cold(prep, emb, k=k, temperature=temperature, intercept_target="global")
    rows.append(_row("Hyper, global intercept target", prep, cold, glob.weights, glob.bias, ndcg_x, rel_draws))
    llm = None
    if endpoint:
        from models.ads.llm_client import ChatClient

        llm = lh.generate_cold(prep, emb, k=k, temperature=temperature, client=ChatClient(endpoint, llm_model))
        rows.append(_row(f"LLM ({llm_model})", prep, cold, llm.weights, llm.bias, ndcg_x, rel_draws))
        rows[-1]["llm_failures"] = len(llm.llm_failures)
        rows[-1]["generation_ms_per_campaign"] = 1e3 * llm.generation_s / len(cold)

    # The served artifact (warm models + hypernetwork cold models, family calibrators) on all TEST logs.
    served = llm if llm is not None else hyper
    cals, cal_report = lh.fit_family_calibrators(prep, served)
    scorer = CtrScorer(prep.tables, served.weights, served.bias, served.source, cals)
    all_test = cs.logs(TEST)
    z = lh.log_logits(prep, served.weights, served.bias, all_test)
    p = np.empty_like(z)
    for s in np.unique(served.source):
        m = served.source[cs.log_campaign[all_test]] == s
        p[m] = lh.apply_calibrator(cals[lh.SOURCES[s]], z[m])
    served_metrics = {"before": ctr_metrics(lh._sigmoid(z), cs.log_click[all_test]),
                      "after": ctr_metrics(p, cs.log_click[all_test]), "test_logs": int(len(all_test))}
    # The scorer must reproduce the offline pipeline exactly (same features, weights, calibration).
    r0 = all_test[:5]
    for r in r0:
        h = padded_histories(world, cs.log_user[[r]], cs.log_time[[r]])
        v = h[0][0] > 0
        got = scorer.score(h[0][0][v], h[1][0][v], h[2][0][v], [cs.log_campaign[r]])[0]
        want = p[np.flatnonzero(all_test == r)[0]]
        if abs(float(got) - float(want)) > 1e-5:
            raise AssertionError(f"CtrScorer disagrees with the offline pipeline on log row {r}: {got} vs {want}")

    # Latency: one request = one history x 100 campaigns (warm and cold mixed), single thread, numpy.
    lat_rows = rng.choice(all_test, size=latency_requests, replace=True)
    hist = padded_histories(world, cs.log_user[lat_rows], cs.log_time[lat_rows])
    cids = rng.permutation(n_c)[:100]
    times = []
    for i in range(latency_requests):
        v = hist[0][i] > 0
        args = (hist[0][i][v], hist[1][i][v], hist[2][i][v], cids)
        t1 = time.perf_counter()
        scorer.score(*args)
        times.append(time.perf_counter() - t1)
    times = np.array(times[10:]) * 1e6
    latency = {"campaigns_per_request": 100, "p50_us_per_request": float(np.median(times)),
               "p99_us_per_request": float(np.percentile(times, 99)),
               "p50_us_per_prediction": float(np.median(times) / 100)}

    up, med, hyp = rows[0]["auc"], rows[1]["auc"], rows[2]["auc"]
    closed = (hyp - med) / (up - med) if up > med else float("nan")
    return {"seed": seed, "embedding": emb_desc, "k": k, "temperature": temperature, "selection_loo_auc": loo,
            "campaigns": {"warm": int(cs.warm.sum()), "cold": int(len(cold))},
            "logs": {"train_per_campaign": int((cs.log_split[cs.log_campaign == 0] == TRAIN).sum()),
                     "calib_per_campaign": int((cs.log_split[cs.log_campaign == 0] == CALIB).sum()),
                     "test_per_campaign": int((cs.log_split[cs.log_campaign == 0] == TEST).sum()),
                     "ctr": float(cs.log_click.mean())},
            "ndcg_requests": int(len(req)), "rows": rows, "gap_closed": closed,
            "target_gap_met": bool(closed >= 0.5), "served": served_metrics, "served_calibration": cal_report,
            "served_target_ece_met": bool(served_metrics["after"]["ece_15"] <= 0.01), "latency": latency,
            "prepare_s": prep_s, "true_model_auc_cold_test": float(_auc_true(cs, cold))}


def _auc_true(cs, cold) -> float:
    from sklearn.metrics import roc_auc_score

    t = cs.logs(TEST, cold)
    return roc_auc_score(cs.log_click[t], cs.log_true_ctr[t])


def to_markdown(res: dict) -> str:
    lat = res["latency"]
    lines = [
        "# Cold-start CTR (LLM-HYPER) on the simulator",
        "",
        f"Generated by `{res.get('command', 'python -m evaluation.ctr_evaluate')}` (seed "
        f"{res['seed']}); numbers are from one run on a shared 2-core CPU machine.",
        "",
        f"- Campaigns: {res['campaigns']['warm']} warm, {res['campaigns']['cold']} cold; logs per campaign: "
        f"{res['logs']['train_per_campaign']} train / {res['logs']['calib_per_campaign']} calib / "
        f"{res['logs']['test_per_campaign']} test; overall CTR {res['logs']['ctr']:.3f}.",
        f"- Creative embedding for retrieval: **{res['embedding']}**; k = {res['k']}, softmax temperature "
        f"{res['temperature']}" + (" (chosen by leave-one-out AUC on the warm campaigns' CALIB logs; cold "
                                   "campaigns and TEST logs not used)." if res["selection_loo_auc"] else "."),
        "- All rows score the cold campaigns' held-out TEST logs. AUC pools every cold impression; NDCG is per "
        f"request ({res['ndcg_requests']} requests, each scoring all cold campaigns) with clicks drawn from the "
        "hidden model as relevance (mean of 5 draws). ECE uses 15 equal-width bins; \"after\" = the family's "
        "calibrator fit on CALIB logs (isotonic when >= 2000 logs and 100 clicks, else Platt).",
        f"- The hidden model's own AUC on the same logs (the ceiling): {res['true_model_auc_cold_test']:.4f}.",
        "",
        "| Model | AUC | NDCG@5 | NDCG@10 | ECE before | ECE after | log loss before | log loss after | calibrator |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['auc']:.4f} | {r['ndcg5']:.4f} | {r['ndcg10']:.4f} | "
                     f"{r['ece_before']:.4f} | {r['ece_after']:.4f} | {r['logloss_before']:.4f} | "
                     f"{r['logloss_after']:.4f} | {r['calibrator']} |")
    s = res["served"]
    lines += [
        "",
        f"Scoring latency (CtrScorer.score, numpy, one request = 1 history x {lat['campaigns_per_request']} "
        f"campaigns, features included): p50 {lat['p50_us_per_request']:.0f} us per request = "
        f"**{lat['p50_us_per_prediction']:.2f} us per prediction**, p99 {lat['p99_us_per_request']:.0f} us per "
        "request. Every linear row serves through this same path (a dot product and a calibrator), so the "
        "latency is the same for all of them; the hypernetwork step runs offline "
        f"({res['rows'][2].get('generation_ms_per_campaign', float('nan')):.2f} ms per cold campaign).",
        "",
        "## Targets",
        "",
        f"- Hyper closes **{100 * res['gap_closed']:.0f}%** of the LR-cold -> LR-warm AUC gap "
        f"(target >= 50%: {'met' if res['target_gap_met'] else 'NOT met'}).",
        f"- Served pCTR (warm models + generated cold models, per-family calibrators, all "
        f"{s['test_logs']} TEST logs): ECE {s['before']['ece_15']:.4f} -> **{s['after']['ece_15']:.4f}**, "
        f"log loss {s['before']['log_loss']:.4f} -> {s['after']['log_loss']:.4f} (target ECE <= 0.01: "
        f"{'met' if res['served_target_ece_met'] else 'NOT met'}).",
        "",
        "Per family of the served artifact:",
        "",
        "| Family | campaigns | calibrator | calib logs | ECE before | ECE after | log loss before | log loss after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["served_calibration"].items():
        lines.append(f"| {name} | {r['campaigns']} | {r['calibrator']} | {r['calib_logs']} | "
                     f"{r['before']['ece_15']:.4f} | {r['after']['ece_15']:.4f} | {r['before']['log_loss']:.4f} | "
                     f"{r['after']['log_loss']:.4f} |")
    lines += [
        "",
        "Paper (LLM-HYPER, proprietary data) for scale: AUC 0.700 warm / 0.672 LLM / 0.559 median cold start; "
        "NDCG@10 0.0792 vs 0.0508; about 0.15 ms per prediction. Our relevance and data differ, so compare "
        "the ordering and the gap closed, not the absolute values.",
        "",
    ]
    if not any(r["model"].startswith("LLM") for r in res["rows"]):
        lines += ["No LLM endpoint was configured for this run, so the LLM row is absent; rerun with "
                  "`--endpoint URL --model NAME` against any OpenAI-compatible server.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/ctr.md"))
    ap.add_argument("--json-out", type=Path, help="also write the raw results as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, help="neighbours (default: leave-one-out selection on warm campaigns)")
    ap.add_argument("--temperature", type=float, help="softmax temperature (default: leave-one-out selection)")
    ap.add_argument("--embedding", choices=lh.EMBEDDING_CHOICES, default="minilm-text")
    ap.add_argument("--embeddings-file", type=Path, help=".npy [C, E] creative embeddings (overrides --embedding)")
    ap.add_argument("--clip-dir", type=Path, help="trained CLIP model dir, for --embedding clip")
    ap.add_argument("--endpoint")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--cache-dir", type=Path, default=Path("artifacts"))
    args = ap.parse_args(argv)
    res = evaluate(seed=args.seed, k=args.k, temperature=args.temperature, embedding=args.embedding,
                   embeddings_file=args.embeddings_file, endpoint=args.endpoint, llm_model=args.model,
                   cache_dir=args.cache_dir, clip_dir=args.clip_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    res["command"] = " ".join(["python -m evaluation.ctr_evaluate"] + list(sys.argv[1:] if argv is None else argv))
    args.out.write_text(to_markdown(res))
    if args.json_out:
        args.json_out.write_text(json.dumps(res, indent=1))
    print(to_markdown(res))


if __name__ == "__main__":
    main()
