"""Evaluation harness: leave-last-out HR@5/10 and NDCG@5/10 with full ranking over the catalog, every model
under the same TrainingBudget, several seeds, mean +- std, written as markdown plus raw JSON.

    python -m evaluation.evaluate --datasets sim ml100k --models mostpop sasrec --seeds 0 1 2 \
        --max-history 50 --out docs/results/grace.md [--quick] [--merge]

--merge adds models to an existing report (same budget, history length and evaluated users are enforced), so
new models join the baselines' table without re-running them. Models come from a registry
(name -> factory(dataset, seed) -> Recommender); models.grace.recommender, when present, registers the GRACE
family on import.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.sequences import SequenceDataset, Split, leave_last_out, time_split
from kernels.machine import cpu_model
from evaluation.baselines import MostPopular, MostRecent, Recommender, SASRec, check_recommendations
from models.budget import TrainingBudget
from evaluation.metrics import target_ranks, topk_metrics
from evaluation.provenance import commit

Factory = Callable[[SequenceDataset, int], Recommender]
REGISTRY: dict[str, Factory] = {}
DESCRIPTIONS: dict[str, str] = {}
KS = (5, 10)
METRICS = tuple(f"{m}@{k}" for m in ("hr", "ndcg") for k in KS)
QUICK_BUDGET = TrainingBudget(epochs=1, max_examples_per_epoch=512, batch_size=64, lr=3e-3)
DEFAULT_BUDGET = TrainingBudget()
EVAL_SAMPLE_SEED = 12345  # one fixed user subsample per dataset, shared by every model and seed (paired)


def register(name: str, factory: Factory, *, description: str = "", replace: bool = False) -> None:
    """Adds a model; `description` is printed in the report's legend."""
    if name in REGISTRY and not replace:
        raise ValueError(f"model {name!r} is already registered (pass replace=True to override)")
    REGISTRY[name] = factory
    DESCRIPTIONS[name] = description


register("mostpop", lambda dataset, seed: MostPopular(),
         description="most-popular items over the training events (ignores the history)")
register("pop30", lambda dataset, seed: MostPopular(days=30),
         description="most-popular items over the last 30 days of training events (recent popularity)")
register("recent", lambda dataset, seed: MostRecent(),
         description="the user's own distinct history items newest first, then most-popular (repeat baseline)")
register("sasrec", lambda dataset, seed: SASRec(),
         description="ID-based SASRec (d=64, 2 layers, 2 heads, dropout 0.2), full-softmax cross-entropy after "
                     "every event of each window (the original objective)")
register("sasrec_last", lambda dataset, seed: SASRec(loss="last"),
         description="SASRec with one loss per (history -> target) example, the target after the full history")

# The GRACE family ("tiger", "grace_nocot", ...) comes from models.grace.recommender. If it fails to import,
# the baselines still run and asking for a GRACE model re-raises the cause. (Registered here rather than by
# that module itself: under `python -m evaluation.evaluate` this module is __main__, not evaluation.evaluate.)
GRACE_IMPORT_ERROR: ImportError | None = None
try:
    from evaluation.harness import harness_factories

    for _name, (_factory, _description) in harness_factories().items():
        register(_name, _factory, description=_description)
except ImportError as e:
    if getattr(e, "name", None) != "models.grace.recommender":
        GRACE_IMPORT_ERROR = e
        print(f"warning: models.grace.recommender failed to import ({e!r}); GRACE models unavailable",
              file=sys.stderr)


def _unknown_models(models: list[str]) -> None:
    unknown = [m for m in models if m not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; registered: {sorted(REGISTRY)}") from GRACE_IMPORT_ERROR


def load_dataset(name: str, *, sim_users: int | None = None, sim_items: int | None = None, sim_seed: int = 0,
                 ml_cache_dir: Path | None = None) -> SequenceDataset:
    if name == "sim":
        from data.sequences import from_world
        from data.simulator import SimConfig, simulate

        overrides = {k: v for k, v in (("num_users", sim_users), ("num_items", sim_items)) if v is not None}
        return from_world(simulate(SimConfig(seed=sim_seed, **overrides)))
    if name == "ml100k":
        from data.movielens import DEFAULT_CACHE, load_movielens_100k

        return load_movielens_100k(ml_cache_dir or DEFAULT_CACHE)
    if Path(name).is_dir():  # a dataset directory of the contract (docs/dataset.md)
        from data.dataset import load_dataset as load_contract
        from data.sequences import from_dataset

        return from_dataset(load_contract(Path(name), check_images=False))
    raise ValueError(f"unknown dataset {name!r}; choose from sim, ml100k or a dataset directory (docs/dataset.md)")


def eval_subsample(num_test: int, eval_users: int) -> np.ndarray:
    """Indices of the test examples to score: all when eval_users is 0 or covers them, else a fixed sample."""
    if eval_users < 0:
        raise ValueError(f"eval_users must be >= 0 (0 = all), got {eval_users}")
    if eval_users == 0 or eval_users >= num_test:
        return np.arange(num_test)
    return np.sort(np.random.default_rng(EVAL_SAMPLE_SEED).choice(num_test, eval_users, replace=False))


def best_epochs(info: dict) -> int | None:
    """The epochs early stopping kept (validations once per epoch): 1 + the kept validation's place in the
    curve; None for a model without a learning curve (nothing trained)."""
    curve = info.get("curve")
    if not curve:
        return None
    return 1 + next(i for i, point in enumerate(curve) if point["step"] == info["best_step"])


def run_one(dataset: SequenceDataset, split: Split, model_name: str, seed: int, budget: TrainingBudget,
            eval_idx: np.ndarray, refit_split: Split | None = None) -> dict:
    """Train (with early stopping when the split has validation), then test on `eval_idx`. With `refit_split`
    (the same test, no validation held out: its events train too), a fresh model is then trained on it for the
    epochs early stopping chose, and that model is tested: the validation period is not lost to training."""
    _unknown_models([model_name])
    torch.manual_seed(seed)
    model = REGISTRY[model_name](dataset, seed)
    started = time.perf_counter()
    model.fit(dataset, split.train, seed=seed, budget=budget, valid=split.valid)
    wall_s = time.perf_counter() - started
    info = dict(getattr(model, "info", None) or {})
    train_s = info.get("train_seconds", wall_s)  # without the validation passes of early stopping
    refit = {}
    if refit_split is not None:
        if budget.eval_every:
            raise ValueError("refit needs validations once per epoch (eval_every 0): it retrains for the kept epochs")
        epochs = best_epochs(info)
        torch.manual_seed(seed)
        chosen = {k: info[k] for k in ("popularity_prior_weight",) if k in info}  # picked on validation
        model = REGISTRY[model_name](dataset, seed)
        if chosen:
            model.preset = chosen
        started = time.perf_counter()
        model.fit(dataset, refit_split.train, seed=seed,
                  budget=dataclasses.replace(budget, epochs=epochs or budget.epochs, patience=0), valid=None)
        refit = {"refit_epochs": epochs, "refit_seconds": round(time.perf_counter() - started, 2),
                 "refit_train_examples": len(refit_split.train)}
        split = refit_split
    test = split.test.subset(eval_idx)
    started = time.perf_counter()
    k = max(KS)
    if dataset.repeats:
        recs = check_recommendations(model.recommend(test, k), len(test), k, dataset.num_items)
    else:  # users never repeat an item: no history item is recommended, as the server does
        recs = model.recommend(test, k, exclude_history=True)
        if any(np.isin(r[r > 0], h).any() for r, h in zip(recs, test.histories)):
            raise ValueError(f"{model_name} recommended a history item with exclude_history")
    eval_s = time.perf_counter() - started
    record = {"dataset": dataset.name, "model": model_name, "description": DESCRIPTIONS.get(model_name, ""),
              "seed": seed, "train_seconds": round(train_s, 2),
              "fit_wall_seconds": round(wall_s, 2), "eval_seconds": round(eval_s, 2), "eval_users": len(test)}
    for key in ("valid_hr@10", "best_step", "seconds_to_best", "train_steps", "targets_per_second", "curve",
                "popularity_prior_weight", "valid_hr@10_by_prior_weight"):
        if key in info:
            record[key] = info[key]
    record.update(refit)
    cfg = getattr(model, "cfg", None)
    if dataclasses.is_dataclass(cfg):  # the model's settings as trained, so later default changes cannot relabel it
        record["config"] = dataclasses.asdict(cfg)
    record.update({m: round(v, 5) for m, v in topk_metrics(recs, test.targets, KS).items()})
    # Each evaluated user's 0-based rank of the target in the top k (-1: missed), in eval order: what the
    # paired comparison between models (paired_differences) resamples.
    record["target_ranks"] = target_ranks(np.asarray(recs)[:, :k], test.targets).tolist()
    losses = getattr(model, "losses", None)
    if losses:
        record["final_train_loss"] = round(float(np.mean(losses[-20:])), 4)
    return record


def aggregate(records: list[dict]) -> list[dict]:
    """Mean and sample std (ddof=1; 0 with one seed) over seeds per (dataset, model), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    rows = []
    for (ds, model), rs in groups.items():
        row = {"dataset": ds, "model": model, "seeds": [r["seed"] for r in rs],
               "description": next((r["description"] for r in rs if r.get("description")), "")}
        for key in METRICS + ("train_seconds", "eval_seconds", "valid_hr@10", "seconds_to_best", "refit_seconds"):
            if any(key not in r for r in rs):
                continue  # models without validation
            v = np.array([r[key] for r in rs], np.float64)
            row[key] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        if any(r.get("refit_epochs") for r in rs):
            row["refit_epochs"] = [r.get("refit_epochs") for r in rs]  # per seed
        rows.append(row)
    return rows


# The models every other one is compared with, user by user: the learned baseline, and the recent popularity
# that a time split rewards (a report pairs against each one it holds).
PAIRED_REFERENCES = ("sasrec", "pop30")
BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 2000, 0


def _per_user(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """HR@10 and NDCG@10 of each evaluated user, averaged over the runs' seeds."""
    ranks = np.array([r["target_ranks"] for r in runs], np.int64)  # [seeds, users]
    hit = (ranks >= 0) & (ranks < 10)
    gain = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return hit.mean(axis=0), gain.mean(axis=0)


def paired_differences(records: list[dict], references: tuple[str, ...] = PAIRED_REFERENCES) -> list[dict]:
    """Per dataset and reference, each model's HR@10 / NDCG@10 minus the reference's on the same users (per-user
    values averaged over each model's seeds), with a 95% bootstrap interval over users: whether a difference in
    the table is larger than what the choice of evaluated users alone would move. Models (or runs) without
    per-user ranks are left out."""
    out = []
    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_key.setdefault((r["dataset"], r["model"]), []).append(r)
    for reference, ((dataset, model), runs) in ((ref, key) for ref in references for key in by_key.items()):
        ref = by_key.get((dataset, reference))
        if model == reference or not ref or any("target_ranks" not in r for r in runs + ref):
            continue
        if len({len(r["target_ranks"]) for r in runs + ref}) != 1:
            continue  # evaluated on different users: no pairing
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        row = {"dataset": dataset, "model": model, "reference": reference, "users": len(runs[0]["target_ranks"])}
        samples = rng.integers(0, row["users"], (BOOTSTRAP_SAMPLES, row["users"]))
        for name, mine, theirs in zip(("hr@10", "ndcg@10"), _per_user(runs), _per_user(ref)):
            diff = mine - theirs
            boot = diff[samples].mean(axis=1)
            row[name] = (float(diff.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
        out.append(row)
    return out


def render_paired(paired: list[dict]) -> list[str]:
    lines = []
    for reference in dict.fromkeys(r["reference"] for r in paired):  # a section per reference, in order
        lines += ["", f"### Paired against `{reference}`", "",
                  f"Each model minus `{reference}` on the same evaluated users (each user's HR@10 / NDCG@10 averaged "
                  f"over a model's seeds), with the 95% interval of {BOOTSTRAP_SAMPLES} bootstrap resamples of the "
                  "users: an interval that contains 0 is a difference the choice of users alone could make.", "",
                  "| model | users | ΔHR@10 [95% interval] | ΔNDCG@10 [95% interval] |", "|---|---:|---|---|"]
        for r in paired:
            if r["reference"] == reference:
                cells = [f"{r[m][0]:+.4f} [{r[m][1]:+.4f}, {r[m][2]:+.4f}]" for m in ("hr@10", "ndcg@10")]
                lines.append(f"| {r['model']} | {r['users']} | " + " | ".join(cells) + " |")
    return lines


def machine_info() -> dict:
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def render_markdown(meta: dict, rows: list[dict], plots: dict[str, str] | None = None,
                    paired: list[dict] | None = None) -> str:
    """plots: dataset name -> learning-curve image file name beside the report; paired: paired_differences."""
    b = meta["budget"]
    stopping = (f"Early stopping: one validation target per user is held out and not trained on (leave-last-out: "
                "the second-last event; time split: the first event after the 70% cut); after "
                f"every {'epoch' if not b.get('eval_every') else str(b['eval_every']) + ' steps'} the model's "
                f"HR@10 on {b.get('eval_users') or 'all'} validation users is measured, training stops after "
                f"{b['patience']} validations without improvement and the best state is tested; {b['epochs']} "
                "epochs is only the cap. `train s` excludes the validation passes; `to best s` is the training "
                "time until the kept state." + (
                    " Then every model is trained again from scratch, with the validation targets (leave-last-out) "
                    "or every event before the test cut (time split) as training events too, for the epochs early "
                    "stopping kept, and that model is tested (`refit s`: its training time); the validation "
                    "columns are the first run's." if meta.get("refit") else "") if b.get("patience") else
                f"No validation: every model trains the whole budget of {b['epochs']} epoch(s).")
    lines = [
        "# GRACE evaluation: " + ("global time split" if meta.get("split") == "time" else "leave-last-out")
        + ", full-catalog ranking",
        "",
        f"Generated {meta['date']} by:",
        "",
        "```",
        *meta["commands"],
        "```",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cpu_count']} CPUs visible, "
        f"torch {meta['machine']['torch']} with {meta['machine']['torch_threads']} thread(s); "
        "the machine was shared with other jobs, so seconds are indicative.",
        "",
        ("Protocol: one time cut for all users at the 80% quantile of event times; each user's first event "
         "after it is the test target (validation: the same at the 70% quantile; training: every event before "
         "that), predicted from up to " if meta.get("split") == "time" else
         "Protocol: each user's last event is the test target, predicted from up to ")
        + f"{meta['max_history']} preceding events. Models that supervise every position (SASRec, GRACE) train on "
        "windows of that many events, a loss after each event; the others on every (history -> target) pair. "
        "Every model ranks the whole catalog and returns its top 10; on a dataset whose users never repeat an item "
        "(MovieLens: a movie is rated once) the history is excluded from every ranking, as the server does. "
        "HR@k and NDCG@k (one relevant item, ideal DCG 1) are averaged over the evaluated users. "
        f"Training: at most {b['max_examples_per_epoch'] or 'all'} examples (windows) per epoch, batch "
        f"{b['batch_size']}, lr {b['lr']}. {stopping} Seeds {meta['seeds']} change model initialisation and "
        "example order; the datasets and the evaluated users are fixed. Cells are mean ± sample std over seeds.",
        "",
        "| dataset | users | items | events | train examples | test users | evaluated users |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in meta["datasets"]:
        sub = "all" if d["eval_users"] == d["test_users"] else f"{d['eval_users']} (fixed random sample)"
        lines.append(f"| {d['name']} | {d['users']} | {d['items']} | {d['events']} | {d['train_examples']} | "
                     f"{d['test_users']} | {sub} |")
    models = list(dict.fromkeys(r["model"] for r in rows))
    described = {r["model"]: r.get("description") for r in rows}  # as recorded by the run (an ablation's too)
    lines += ["", "Models:", ""] + [f"- `{m}`: {described.get(m) or DESCRIPTIONS.get(m) or 'registered without a description'}"
                                    for m in models]
    for d in meta["datasets"]:
        refit_cols = meta.get("refit", False)
        lines += ["", f"## {d['name']}", "",
                  "| model | HR@10 | NDCG@10 | HR@5 | NDCG@5 | valid HR@10 | train s | to best s | "
                  + ("refit epochs | refit s | " if refit_cols else "") + "eval s | seeds |",
                  "|---|---|---|---|---|---|---:|---:|" + ("---|---:|" if refit_cols else "") + "---:|---|"]
        for r in rows:
            if r["dataset"] != d["name"]:
                continue
            cells = [f"{r[m][0]:.4f} ± {r[m][1]:.4f}" for m in ("hr@10", "ndcg@10", "hr@5", "ndcg@5")]
            valid = r.get("valid_hr@10")
            cells.append(f"{valid[0]:.4f} ± {valid[1]:.4f}" if valid else "")
            best = r.get("seconds_to_best")
            cells += [f"{r['train_seconds'][0]:.1f}", f"{best[0]:.1f}" if best else ""]
            if refit_cols:
                cells += [" ".join(map(str, r["refit_epochs"])) if r.get("refit_epochs") else "",
                          f"{r['refit_seconds'][0]:.1f}" if r.get("refit_seconds") else ""]
            cells += [f"{r['eval_seconds'][0]:.1f}", " ".join(map(str, r["seeds"]))]
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
        lines += render_paired([p for p in paired or [] if p["dataset"] == d["name"]])
        if plots and d["name"] in plots:
            lines += ["", f"![validation HR@10 against training seconds, {d['name']}]({plots[d['name']]})"]
    lines += ["", f"Raw per-seed results (with each run's validation curve): `{meta['json']}`.", ""]
    return "\n".join(lines)


def plot_curves(records: list[dict], stem: Path) -> list[Path]:
    """Validation HR@10 against training seconds, one line per (model, seed), one PNG per dataset:
    <stem>_<dataset>.png."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    for ds in dict.fromkeys(r["dataset"] for r in records):
        runs = [r for r in records if r["dataset"] == ds and r.get("curve")]
        if not runs:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colors = {}
        for r in runs:
            color = colors.setdefault(r["model"], f"C{len(colors)}")
            ax.plot([p["train_seconds"] for p in r["curve"]], [p["valid_hr@10"] for p in r["curve"]], marker=".",
                    color=color, label=r["model"] if r["model"] not in ax.get_legend_handles_labels()[1] else None)
        ax.set_xscale("log")
        ax.set_xlabel("training seconds (1 thread, validation passes excluded)")
        ax.set_ylabel("validation HR@10")
        ax.set_title(f"{ds}: learning curves (one line per seed)")
        ax.grid(alpha=0.3)
        ax.legend()
        path = stem.parent / f"{stem.name}_{ds}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _load_previous(json_path: Path, budget: dict, max_history: int, split_kind: str = "last",
                   refit: bool = False) -> dict:
    """An earlier report to merge into; refused unless it used the same budget, history length and protocol."""
    old = json.loads(json_path.read_text())
    defaults = {"split": "last", "refit": False}
    for key, value in (("budget", budget), ("max_history", max_history), ("split", split_kind), ("refit", refit)):
        if old["meta"].get(key, defaults.get(key)) != value:
            raise ValueError(f"--merge: {json_path} was made with {key}={old['meta'].get(key, defaults.get(key))}, "
                             f"this run uses "
                             f"{value}; every model in one table must share the protocol and budget")
    return old


def _merge(old: dict, meta: dict, records: list[dict]) -> tuple[dict, list[dict]]:
    """This run added to an earlier report: earlier runs are kept unless re-run now."""
    old_ds = {d["name"]: d for d in old["meta"]["datasets"]}
    new_keys = {(r["dataset"], r["model"], r["seed"]) for r in records}
    kept = [r for r in old["runs"] if (r["dataset"], r["model"], r["seed"]) not in new_keys]
    merged = dict(meta)
    old_commands = old["meta"].get("commands") or [old["meta"]["command"]]  # early reports had one "command"
    merged["commands"] = old_commands + meta["commands"]
    merged["seeds"] = sorted(set(old["meta"]["seeds"]) | set(meta["seeds"]))
    merged["datasets"] = list({**old_ds, **{d["name"]: d for d in meta["datasets"]}}.values())
    return merged, kept + records


def evaluate(datasets: list[str], models: list[str], seeds: list[int], max_history: int, budget: TrainingBudget,
             eval_users: int, out: Path | None, command: str, merge: bool = False, split_kind: str = "last",
             refit: bool = False, **dataset_kw) -> tuple[dict, list[dict]]:
    _unknown_models(models)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    json_path = out.with_suffix(".json") if out else None
    code_commit = commit()  # at the start: the code that trains is the code of this moment
    previous = None
    if merge and json_path and json_path.exists():  # checked before any training, so a mismatch costs nothing
        previous = _load_previous(json_path, dataclasses.asdict(budget), max_history, split_kind, refit)
    if refit and not budget.patience:
        raise ValueError("refit retrains for the epochs early stopping chose: it needs --patience > 0")
    records, ds_meta = [], []
    for ds_name in datasets:
        dataset = load_dataset(ds_name, **dataset_kw)
        if split_kind == "time":
            split = time_split(dataset, max_history, valid_quantile=0.7 if budget.patience > 0 else None)
        else:
            split = leave_last_out(dataset, max_history, validation=budget.patience > 0)
        refit_split = None
        if refit:  # the same test targets, the validation events trained on
            refit_split = (time_split(dataset, max_history, valid_quantile=None) if split_kind == "time"
                           else leave_last_out(dataset, max_history, validation=False))
            if not np.array_equal(refit_split.test.targets, split.test.targets):
                raise AssertionError("the refit split must test the same targets")
        eval_idx = eval_subsample(len(split.test), eval_users)
        ds_meta.append({**dataset.stats(), "train_examples": len(split.train), "test_users": len(split.test),
                        "eval_users": len(eval_idx)})
        before = {d["name"]: d for d in previous["meta"]["datasets"]} if previous else {}
        if ds_name in before and (before[ds_name]["eval_users"], before[ds_name]["events"]) != (
                len(eval_idx), dataset.num_events):
            raise ValueError(f"--merge: dataset {ds_name} differs from the earlier report (evaluated users "
                             f"{before[ds_name]['eval_users']} vs {len(eval_idx)}, events {before[ds_name]['events']} "
                             f"vs {dataset.num_events}); use the same --eval-users and dataset options")
        for model_name in models:
            for seed in seeds:
                r = run_one(dataset, split, model_name, seed, budget, eval_idx, refit_split)
                print(json.dumps(r), file=sys.stderr, flush=True)
                records.append(r)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"date": date, "commands": [f"{command}  # {date}"], "commit": code_commit,
            "machine": machine_info(), "budget": dataclasses.asdict(budget), "max_history": max_history,
            "split": split_kind, **({"refit": True} if refit else {}),
            "seeds": seeds, "datasets": ds_meta, "json": str(json_path) if json_path else None}
    if previous is not None:
        meta, records = _merge(previous, meta, records)
    rows = aggregate(records)
    if out:
        write_report(out, meta, records, rows)
    return meta, rows


SECTION = "grace_quality"  # BENCHMARKS.md's markers: <!-- grace_quality: begin --> ... end -->


def write_report(out: Path, meta: dict, records: list[dict], rows: list[dict], benchmarks: Path | None = None,
                 write_json: bool = True) -> None:
    """The markdown table, one learning-curve PNG per dataset beside it (<out stem>_<dataset>.png) and the raw
    JSON (<out>.json) it is rendered from; with `benchmarks`, the same table as that file's section."""
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = {p.stem[len(out.stem) + 1:]: p.name for p in plot_curves(records, out.with_suffix(""))}
    text = render_markdown(meta, rows, plots, paired_differences(records))
    out.write_text(text)
    if write_json:
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    if benchmarks:
        from evaluation.pipeline_quality import with_section  # noqa: PLC0415

        benchmarks.write_text(with_section(benchmarks.read_text(), benchmark_section(text, out), SECTION))


def benchmark_section(report: str, out: Path) -> str:
    """The report inside BENCHMARKS.md: image links relative to the repository root."""
    return re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({out.parent.as_posix()}/{m.group(1)})", report)


EACH_OWN = "each command's own (in brackets)"  # the commit of a report combined from runs at several commits


def _commands_with_commit(meta: dict) -> dict:
    """A report's commands, each marked with the commit its runs trained at (reports combined from runs made at
    different commits keep each one's)."""
    commands = meta.get("commands") or [meta["command"]]
    # A report already combined from several commits has its commands marked (EACH_OWN): nothing to add.
    mark = f"  [commit {meta['commit']}]" if meta.get("commit") and meta["commit"] != EACH_OWN else ""
    return {**meta, "commands": [c if "[commit " in c else c + mark for c in commands]}


def combine(reports: list[Path], out: Path, command: str) -> tuple[dict, list[dict]]:
    """Several reports of the same protocol and budget (e.g. runs made in parallel) -> one table at `out`."""
    first = json.loads(reports[0].read_text())
    meta, records = _commands_with_commit(first["meta"]), first["runs"]
    commits = {first["meta"].get("commit")}
    for path in reports[1:]:
        later = _load_previous(path, meta["budget"], meta["max_history"], meta.get("split", "last"),
                               meta.get("refit", False))
        commits.add(later["meta"].get("commit"))
        later = {**later, "meta": _commands_with_commit(later["meta"])}
        sizes = {d["name"]: (d["eval_users"], d["events"]) for d in meta["datasets"]}
        for d in later["meta"]["datasets"]:
            if d["name"] in sizes and sizes[d["name"]] != (d["eval_users"], d["events"]):
                raise ValueError(f"--combine: {path} evaluated dataset {d['name']} differently")
        meta, records = _merge({"meta": meta, "runs": records}, later["meta"], later["runs"])
    json_path = out.with_suffix(".json")
    meta = {**meta, "json": str(json_path), "commands": meta["commands"] + [command],
            "commit": commits.pop() if len(commits) == 1 else EACH_OWN}
    rows = aggregate(records)
    write_report(out, meta, records, rows)
    return meta, rows


def _parse_setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--grace expects FIELD=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["sim", "ml100k"],
                   help="sim, ml100k, or dataset directories of the contract (docs/dataset.md)")
    p.add_argument("--models", nargs="+", default=["mostpop", "sasrec"], help=f"registered: {sorted(REGISTRY)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--split", choices=("last", "time"), default="last",
                   help="last: leave-last-out per user; time: one global cut at the 80%% quantile of event times "
                        "(validation at 70%%), the first event after it per user is the test target")
    p.add_argument("--refit", action="store_true",
                   help="after early stopping, train each model again from scratch with the validation events too, "
                        "for the epochs it kept, and test that model (needs --patience)")
    p.add_argument("--out", type=Path, help="markdown report; raw JSON goes next to it (.json)")
    p.add_argument("--merge", action="store_true",
                   help="add to the report at --out (same budget and protocol), replacing re-run (model, seed) pairs")
    p.add_argument("--quick", action="store_true", help="tiny budget and 200 evaluated users (CI smoke test)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-examples", type=int, help="max training examples per epoch (0 = all)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-users", type=int, help="evaluate a fixed random sample of test users (0 = all)")
    p.add_argument("--patience", type=int,
                   help="early stopping: hold out each user's second-last event as validation and stop after this "
                        "many validations without a better HR@10 (--epochs is then the cap); 0 = off")
    p.add_argument("--eval-every", type=int, help="steps between validations (0 = once per epoch)")
    p.add_argument("--valid-users", type=int, help="validation examples scored per validation (0 = all)")
    p.add_argument("--grace", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a models.grace.recommender.GraceTrainConfig field for every GRACE model, e.g. "
                        "semantic_source=collaborative (repeatable; the value is parsed as JSON when it is JSON)")
    p.add_argument("--suffix", default="", help="appended to the GRACE models' names in the report (an ablation)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 while the machine is shared)")
    p.add_argument("--sim-users", type=int)
    p.add_argument("--sim-items", type=int)
    p.add_argument("--sim-seed", type=int, default=0)
    p.add_argument("--ml-cache-dir", type=Path)
    p.add_argument("--from-result", type=Path, metavar="REPORT_JSON",
                   help="only re-render this committed result file at --out (and into --benchmarks)")
    p.add_argument("--benchmarks", type=Path, help="also replace (or add) the report's section in this BENCHMARKS.md")
    p.add_argument("--combine", nargs="+", type=Path, metavar="REPORT_JSON",
                   help="only merge these reports (same protocol and budget) into one table at --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # validation progress
    if args.from_result:
        if not args.out:
            p.error("--from-result needs --out")
        raw = json.loads(args.from_result.read_text())
        write_report(args.out, raw["meta"], raw["runs"], aggregate(raw["runs"]), args.benchmarks, write_json=False)
        return
    if args.combine:
        if not args.out:
            p.error("--combine needs --out")
        combine(args.combine, args.out, "python -m evaluation.evaluate " + shlex.join(argv))
        if args.benchmarks:
            raw = json.loads(args.out.with_suffix(".json").read_text())
            write_report(args.out, raw["meta"], raw["runs"], aggregate(raw["runs"]), args.benchmarks, write_json=False)
        return
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.grace or args.suffix:
        from evaluation.harness import harness_factories  # noqa: PLC0415

        factories = harness_factories(dict(_parse_setting(a) for a in args.grace))
        for name, (factory, description) in factories.items():
            settings = ", ".join(args.grace)
            register(name + args.suffix, factory, replace=True,
                     description=description + (f" ({settings})" if settings else ""))
        args.models = [m + args.suffix if m in factories else m for m in args.models]
    torch.set_num_threads(args.threads)
    base = QUICK_BUDGET if args.quick else DEFAULT_BUDGET
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("patience", args.patience), ("eval_every", args.eval_every),
                                   ("eval_users", args.valid_users)) if v is not None}
    if args.max_examples is not None:
        overrides["max_examples_per_epoch"] = args.max_examples or None
    budget = dataclasses.replace(base, **overrides)
    eval_users = args.eval_users if args.eval_users is not None else (200 if args.quick else 0)
    command = "python -m evaluation.evaluate " + shlex.join(argv)
    _, rows = evaluate(args.datasets, args.models, args.seeds, args.max_history, budget, eval_users, args.out,
                       command, merge=args.merge, split_kind=args.split, refit=args.refit, sim_users=args.sim_users,
                       sim_items=args.sim_items,
                       sim_seed=args.sim_seed, ml_cache_dir=args.ml_cache_dir)
    if args.benchmarks and args.out:
        raw = json.loads(args.out.with_suffix(".json").read_text())
        write_report(args.out, raw["meta"], raw["runs"], aggregate(raw["runs"]), args.benchmarks, write_json=False)
    for r in rows:
        print(f"{r['dataset']:8s} {r['model']:12s} " + "  ".join(f"{m}={r[m][0]:.4f}±{r[m][1]:.4f}" for m in METRICS)
              + f"  train={r['train_seconds'][0]:.1f}s")


if __name__ == "__main__":
    main()
