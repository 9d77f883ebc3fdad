"""Build a model repository from a dataset (docs/dataset.md): validate and encode it, then one stage per model
family (fit -> write its artifacts -> report its metrics), the configs rendered from the serving graph, and a
check that every step of the graph finds the artifacts it declares.

    python -m exporters.build_repository --dataset DIR --out REPO [--config build.json] [--set grace.epochs=3]

Without --dataset (and no `dataset` in the config) the simulator writes its dataset (the build config's
`simulator` section) into a temporary directory, and the build reads it through the same path as anyone's.
Writes `<out>/build_manifest.json` with the configuration, the dataset's summary, what the build skipped,
each stage's metrics and the ONNX parity figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from data.build_data import BuildData, dataset_directory, load_build_data
from data.dataset import DatasetError
from data.sequences import leave_last_out
from evaluation.baselines import MostPopular, MostRecent, SASRec
from evaluation.harness import evaluate_recommender
from evaluation.metrics import topk_metrics
from exporters.clip_export import export_clip
from exporters.config import AUTO, AUTO_VARIANTS, BuildConfig, load_config
from exporters.onnx_export import PARITY_TOLERANCE, export_grace, export_ranker, export_sasrec
from exporters.ordering import fit_ordering
from models.ads.llm_hyper import generate_artifact
from models.ads.logs import split_ad_logs
from models.budget import TrainingBudget
from models.clip.model import VOCAB_FILE as CLIP_VOCAB_FILE, ClipEmbedder
from models.clip.train import embed_items, train as train_clip
from models.grace.model import save_checkpoint as save_grace
from models.grace.recommender import GraceRecommender
from models.ranking.model import save_checkpoint as save_ranker
from models.ranking.train import train_ranker
from models.sasrec import save_checkpoint as save_sasrec
from models.reference import CLIP_CHECKPOINT_DIR, MANIFEST
from serving import graph
from serving.calibration import CALIBRATOR_FILE
from serving.catalog import CATEGORY_FILE, ITEM_IDS_FILE, ItemIds, save_top_category
from serving.clip.ann_index import build_index, config_for, save_index
from serving.clip.retrieval import ITEM_EMBEDDINGS_FILE, ITEM_INDEX_FILE
from serving.configs import write_configs
from serving.grace.retriever import save_decoding
from serving.contract import behavior_code
from serving.recent import REMOVAL_EVENT, recent_items

SOURCE_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
BUILDS = SOURCE_REPOSITORY.parent / "builds"  # where `--dataset DIR` without --out builds (git-ignored)
STEP_ENTRY = "model.py"  # the committed python-backend entry of each step
EXAMPLE_ITEMS = 20  # most-interacted item ids published for synthetic traffic (clients, load tests)


@dataclasses.dataclass
class Build:
    """What the stages share: the configuration, the data, the serving limits and each step's version folder."""

    config: BuildConfig
    out: Path
    data: BuildData
    limits: object
    parity: dict = dataclasses.field(default_factory=dict)
    shared: dict = dataclasses.field(default_factory=dict)  # values one stage hands to a later one
    not_built: dict = dataclasses.field(default_factory=dict)  # step name -> why the data does not allow it

    def dir(self, step: graph.Step) -> Path:
        path = self.out / step.name / "1"
        path.mkdir(parents=True, exist_ok=True)
        return path


def catalog_stage(b: Build) -> dict:
    """The catalog tables: each item's top category for every step that filters, the dataset's item ids for
    every step at the API's edge (each declares the file in the graph)."""
    cat = b.data.catalog
    for step in graph.SERVED_STEPS:
        if step.name in b.not_built:
            continue
        if CATEGORY_FILE in step.artifacts:
            save_top_category(b.dir(step), cat.top_category)
        if ITEM_IDS_FILE in step.artifacts:
            ItemIds(cat.item_ids).save(b.dir(step))
    return {"items": int(cat.num_items), "categories": list(cat.top_names), "leaf_categories": cat.num_leaf_categories,
            "brands": cat.num_brands - 1, "items_with_image": int(sum(p is not None for p in cat.images[1:])),
            "example_item_ids": list(b.limits.example_item_ids)}


def grace_stage(b: Build) -> dict:
    """GRACE trained until its validation HR@10 stops improving (each user's second-last event held out;
    epochs is the cap), evaluated on the held-out last events beside SASRec, most-popular and recency trained
    and evaluated in this build on the same split (manifest grace.baselines)."""
    cfg = b.config.grace
    dataset = b.data.sequences()
    split = leave_last_out(dataset, b.limits.max_history, validation=cfg.patience > 0)
    test = split.test.subset(np.arange(min(cfg.eval_users, len(split.test))))
    b.shared["eval_examples"] = test
    b.shared["split"] = split
    b.shared["valid_examples"] = (None if split.valid is None
                                  else split.valid.subset(np.arange(min(cfg.valid_users, len(split.valid)))))
    budget = TrainingBudget(epochs=cfg.epochs, max_examples_per_epoch=cfg.examples_per_epoch,
                            batch_size=cfg.batch_size, lr=cfg.lr, patience=cfg.patience, eval_users=cfg.valid_users)
    retriever, metrics = fit_grace(b, dataset, split, budget)
    metrics.update(evaluate_recommender(retriever, test, exclude_history=b.limits.exclude_history))
    if cfg.baselines:
        metrics["baselines"] = baseline_metrics(dataset, split, test, budget, b)
    # The encoder's input length limit follows the tokenizer (the GPU rendering's native models check it).
    b.limits = dataclasses.replace(b.limits, tokens_per_event=retriever.encoder.tokenizer.tokens_per_event)
    retriever.encoder.save(b.dir(graph.GRACE_RETRIEVE))  # the tokenizer the search decodes with, too
    b.parity.update(export_grace(retriever.model, b.dir(graph.GRACE_RETRIEVE), seed=b.config.seed))
    save_decoding(b.dir(graph.GRACE_RETRIEVE), retriever.trie_decode,  # the served search scores as validated
                  retriever.prior_item_weights, retriever.prior.weight if retriever.prior else 0.0,
                  retriever.prior_top.items if retriever.prior_top is not None else None)
    save_grace(retriever.model, b.dir(graph.GRACE_RETRIEVE))  # the in-process reference runs it
    return metrics


def fit_grace(b: Build, dataset, split, budget: TrainingBudget) -> tuple[GraceRecommender, dict]:
    """The GRACE variant of the config trained; with variant "auto", each of AUTO_VARIANTS trained and the one
    with the best validation NDCG@10 (then HR@10) kept: which item path serves a catalog best depends on its
    attributes (docs/results/grace_path.md). Without validation users, the first of them."""
    cfg = b.config.grace
    model_cfg = dataclasses.replace(cfg.model, beam_width=b.limits.beam_width)
    valid = b.shared["valid_examples"]
    variants = AUTO_VARIANTS if cfg.variant == AUTO else (cfg.variant,)
    if valid is None:
        variants = variants[:1]
    fitted = []
    for variant in variants:
        retriever = GraceRecommender(variant, model_cfg)
        metrics = retriever.fit(dataset, split.train, seed=b.config.seed, budget=budget, valid=split.valid)
        if len(variants) > 1:
            scored = evaluate_recommender(retriever, valid, exclude_history=b.limits.exclude_history)
            metrics["validation"] = {k: scored[k] for k in ("hr@10", "ndcg@10")}
        fitted.append((retriever, metrics))
    # max keeps the first of equals: AUTO_VARIANTS' order breaks ties
    retriever, metrics = max(fitted, key=lambda f: (f[1].get("validation", {}).get("ndcg@10", 0.0),
                                                    f[1].get("validation", {}).get("hr@10", 0.0)))
    metrics["variant"] = retriever.name
    if len(fitted) > 1:
        metrics["variant_choice"] = {r.name: {**m["validation"], "train_seconds": m["train_seconds"]}
                                     for r, m in fitted}
    return retriever, metrics


# SASRec is cheap (a few seconds per epoch): a generous cap, early stopping decides (MovieLens-100k: ~40 epochs).
SASREC_BUDGET = TrainingBudget(epochs=200, max_examples_per_epoch=None, batch_size=128, lr=2e-3, patience=5,
                               eval_users=300)


def baseline_metrics(dataset, split, test, budget: TrainingBudget, b: Build) -> dict:
    """SASRec (one loss per position, the same early stopping), most-popular and recency on GRACE's split."""
    out = {}
    for name, model in (("sasrec", SASRec(max_len=b.limits.max_history)), ("mostpop", MostPopular()),
                        ("recency", MostRecent())):
        out[name] = fit_and_evaluate(model, dataset, split, test, budget, b)
        if name == "sasrec":  # served as a retrieval source too (sasrec_stage exports this very model)
            b.shared["sasrec"] = (model, out[name])
    return out


def fit_and_evaluate(model, dataset, split, test, budget: TrainingBudget, b: Build) -> dict:
    started = time.perf_counter()
    model.fit(dataset, split.train, seed=b.config.seed, budget=SASREC_BUDGET if budget.patience else
              dataclasses.replace(SASREC_BUDGET, patience=0, epochs=budget.epochs), valid=split.valid)
    info = getattr(model, "info", {})
    return {**evaluate_recommender(model, test, exclude_history=b.limits.exclude_history),
            "train_seconds": info.get("train_seconds", round(time.perf_counter() - started, 1)),
            **{k: v for k, v in info.items() if k in ("valid_hr@10", "best_step", "seconds_to_best")}}


def sasrec_stage(b: Build) -> dict:
    """SASRec served as a retrieval source (sasrec_retrieve): the model the GRACE stage trained as its baseline
    (one loss per position, early stopping on the same validation users), or trained here when the build skips
    the baselines; exported to ONNX, with the torch checkpoint for the in-process reference."""
    if "sasrec" in b.shared:
        model, metrics = b.shared["sasrec"]
    else:
        cfg = b.config.grace
        budget = TrainingBudget(epochs=cfg.epochs, patience=cfg.patience, eval_users=cfg.valid_users)
        model = SASRec(max_len=b.limits.max_history)
        metrics = fit_and_evaluate(model, b.data.sequences(), b.shared["split"], b.shared["eval_examples"], budget, b)
    out = b.dir(graph.SIDE_RETRIEVE)
    b.parity.update({f"{graph.SIDE_RETRIEVE.name}/{k}": v for k, v in export_sasrec(model.model, out,
                                                                                      seed=b.config.seed).items()})
    save_sasrec(model.model, out)
    return metrics


def recent_stage(b: Build) -> dict:
    """The recently-interacted source needs only the catalog table; its stage reports what it retrieves alone
    on the held-out users GRACE is evaluated on (same protocol: leave-last-out, top-10)."""
    test = b.shared["eval_examples"]
    ranked = np.zeros((len(test), 10), np.int64)
    for i in range(len(test)):
        eligible = np.ones(b.limits.num_items + 1, bool)
        eligible[0] = False
        if b.limits.exclude_history:  # as served: a dataset without repeats never gets its history back
            eligible[test.histories[i]] = False
        items, _ = recent_items(test.histories[i], test.behaviors[i], eligible, min(10, b.limits.recent_candidates),
                                behavior_code(b.limits.event_names, REMOVAL_EVENT))
        ranked[i, :len(items)] = items
    return {"eval_users": len(test), **{k: round(v, 4) for k, v in topk_metrics(ranked, test.targets).items()}}


def clip_stage(b: Build) -> dict:
    """CLIP trained on the dataset's item images and texts, exported for clip_embed (ONNX + the torch checkpoint
    the reference uses), and the FAISS index of the items' embeddings that clip_retrieve searches."""
    clip_dir = b.dir(graph.CLIP_EMBED) / CLIP_CHECKPOINT_DIR
    metrics = train_clip(clip_dir, b.config.clip, b.data)
    embedder = ClipEmbedder.load(clip_dir)
    b.shared["clip"] = embedder
    b.parity.update({f"{graph.CLIP_EMBED.name}/{k}": v for k, v in export_clip(
        embedder.model, b.dir(graph.CLIP_EMBED), clip_dir / CLIP_VOCAB_FILE, seed=b.config.seed).items()})
    emb = embed_items(embedder, b.data).astype(np.float32)  # [N, D]: image and text, or text alone
    ids = np.arange(1, b.data.num_items + 1)
    index_cfg = config_for(len(emb))
    out = b.dir(graph.SIDE_RETRIEVE)
    save_index(build_index(emb, index_cfg, ids), out / ITEM_INDEX_FILE, index_cfg)
    np.save(out / ITEM_EMBEDDINGS_FILE, np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb]))
    return {**metrics, "index": {"items": len(emb), "config": index_cfg.to_dict()}}


def ranker_stage(b: Build) -> dict:
    ranker, calibrator, metrics = train_ranker(b.data, b.config.ranker)
    calibrator.save(b.dir(graph.RANK) / CALIBRATOR_FILE)
    b.parity.update(export_ranker(ranker, b.dir(graph.RANK), b.limits.max_history, b.limits.max_candidates,
                                  seed=b.config.seed))
    save_ranker(ranker, b.dir(graph.RANK))  # the in-process reference runs it
    return metrics


def ads_stage(b: Build) -> dict:
    """The dataset's campaigns and ad impressions: warm LR, LLM-HYPER cold-start weights from the CLIP-nearest
    warm campaigns (retrieval-weighted: no LLM endpoint here), per-family calibrators -> score_ads's artifact."""
    if graph.SCORE_ADS.name not in b.not_built and not split_ad_logs(b.data.campaigns).warm.any():
        b.not_built[graph.SCORE_ADS.name] = (
            "no campaign has enough training impressions to learn from (models.ads.logs.split_ad_logs: the oldest "
            "70% of ad_impressions, >= 100 per campaign with >= 5 clicks and non-clicks)")
        shutil.rmtree(b.out / graph.SCORE_ADS.name)
    if graph.SCORE_ADS.name in b.not_built:
        return {"built": False, "reason": b.not_built[graph.SCORE_ADS.name]}
    out = b.dir(graph.SCORE_ADS)
    meta = generate_artifact(b.data, b.shared["clip"], out, seed=b.config.seed)
    return meta["summary"]


def ordering_stage(b: Build) -> dict:
    """Last: calibrate's mix of the ranker's order and the merge order, picked on GRACE's validation users by
    running the steps just written (exporters.ordering)."""
    return fit_ordering(b.out, b.limits, b.shared.get("valid_examples"), b.data.catalog.item_ids)


# In order: a stage may use what an earlier one handed on (sasrec exports GRACE's baseline and recent evaluates
# on GRACE's users, ads embeds its creatives with the CLIP model, ordering runs every step of recommend).
STAGES = (("catalog", catalog_stage), ("ranking", ranker_stage), ("grace", grace_stage), ("sasrec", sasrec_stage),
          ("recent", recent_stage),
          ("clip", clip_stage), ("ads", ads_stage), ("ordering", ordering_stage))


def steps_not_built(data: BuildData) -> dict[str, str]:
    """Served steps the dataset cannot feed, with the reason the launcher prints at start."""
    if data.campaigns is None:
        return {graph.SCORE_ADS.name: "the dataset has no campaigns.parquet + ad_impressions.parquet"}
    return {}


def missing_artifacts(out: Path, skipped=()) -> list[str]:
    return [f"{step.name}/1/{name}" for step in graph.SERVED_STEPS if step.name not in skipped
            for name in step.artifacts + (STEP_ENTRY,) if not (out / step.name / "1" / name).exists()]


def data_limits(config: BuildConfig, data: BuildData):
    """The serving limits: the config's, and what the data decides. A catalog smaller than the configured
    GRACE beam or nearest-neighbour count caps them (a beam per item at most)."""
    popular = np.argsort(-data.item_popularity()[1:], kind="stable")[:EXAMPLE_ITEMS] + 1
    serving = dataclasses.replace(config.serving, beam_width=min(config.serving.beam_width, data.num_items),
                                  knn_candidates=min(config.serving.knn_candidates, data.num_items),
                                  sasrec_candidates=min(config.serving.sasrec_candidates, data.num_items))
    return serving.limits(
        num_items=data.num_items, num_categories=data.catalog.num_top_categories,
        num_campaigns=data.campaigns.num_campaigns if data.campaigns is not None else 0,
        event_names=tuple(data.meta.events), category_names=tuple(data.catalog.top_names),
        example_item_ids=tuple(int(i) for i in data.catalog.item_ids[popular]), exclude_history=not data.meta.repeats)


def build(out: Path, config: BuildConfig = BuildConfig()) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with dataset_directory(config.dataset, config.simulator, config.seed) as (directory, provenance):
        data = load_build_data(directory)
        manifest = _build(out, config, data, started)
    manifest["dataset"] = {**provenance, **manifest["dataset"]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def stale_models(repository: Path) -> list[str]:
    """Model folders (with a config.pbtxt) in `repository` that the serving graph does not declare: left by a build
    of an older graph, or a GPU rendering's native models."""
    current = {step.name for step in graph.SERVED_STEPS} | {e.name for e in graph.ENSEMBLES}
    return sorted(p.parent.name for p in Path(repository).glob("*/config.pbtxt") if p.parent.name not in current)


def _build(out: Path, config: BuildConfig, data: BuildData, started: float) -> dict:
    limits = data_limits(config, data)
    not_built = steps_not_built(data)
    out.mkdir(parents=True, exist_ok=True)
    for name in not_built:  # a repository rebuilt from other data must not keep a stale step
        shutil.rmtree(out / name, ignore_errors=True)
    for name in stale_models(out):  # nor one that an older serving graph had (tritonserver would try to load it)
        shutil.rmtree(out / name)
    write_configs(out, limits, skip=not_built)  # first: a config error should not cost a training run
    b = Build(config, out, data, limits, not_built=not_built)
    if out.resolve() != SOURCE_REPOSITORY.resolve():
        for step in graph.SERVED_STEPS:
            if step.name not in not_built:
                shutil.copy2(SOURCE_REPOSITORY / step.name / "1" / STEP_ENTRY, b.dir(step) / STEP_ENTRY)
    metrics = {}
    for name, stage in STAGES:
        metrics[name] = stage(b)
    worst = max(b.parity.values())
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: {b.parity} (tolerance {PARITY_TOLERANCE})")
    write_configs(out, b.limits, skip=not_built)  # again, with the limits the stages settled (GRACE's tokens)
    missing = missing_artifacts(out, not_built)
    if missing:
        raise RuntimeError(f"the serving graph declares artifacts that no stage wrote: {missing}")
    summary = load_summary(data)
    return {
        "config": config.to_dict(), "limits": dataclasses.asdict(b.limits), "dataset": summary,
        "not_built": not_built, **metrics, "onnx_parity_max_abs_diff": b.parity,
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def load_summary(data: BuildData) -> dict:
    """The dataset as the build saw it, with everything it could not use counted (nothing is dropped silently)."""
    lengths = np.diff(data.user_bounds())
    return {"name": data.name, "items": data.num_items, "users": data.num_users, "events": int(len(data.event_item)),
            "events_vocabulary": list(data.meta.events),
            "impressions": int(len(data.impression_user)) if data.has_impressions else 0,
            "campaigns": data.campaigns.num_campaigns if data.campaigns is not None else 0,
            "skipped": {
                "users_without_events": int((lengths == 0).sum()),
                "users_with_one_event_not_evaluated": int((lengths == 1).sum()),
                "items_without_image_text_only_embedding": int(sum(p is None for p in data.catalog.images[1:])),
                "items_never_interacted": int((data.item_popularity()[1:] == 0).sum()),
            }}


def repository_for(dataset: Path) -> Path:
    """The model repository a dataset builds into by default: keyed by the dataset's name and a fingerprint of
    its directory and files (path, names, sizes, modification times), so two datasets, or a dataset whose files
    changed, never overwrite each other's build."""
    directory = Path(dataset).resolve()
    digest = hashlib.sha256(str(directory).encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        st = path.stat()
        digest.update(f"{path.relative_to(directory)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    try:
        name = json.loads((directory / "dataset.json").read_text()).get("name") or directory.name
    except (OSError, ValueError, AttributeError):
        name = directory.name
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(name))[:48] or "dataset"
    return BUILDS / f"{safe}-{digest.hexdigest()[:10]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help=f"model repository to write (default: {SOURCE_REPOSITORY.name}/ for "
                                                 f"the simulator, {BUILDS.name}/<name>-<fingerprint>/ for --dataset)")
    parser.add_argument("--dataset", type=Path, help="dataset directory (docs/dataset.md); default: the simulator's")
    parser.add_argument("--print-repository", action="store_true",
                        help="print the default repository of --dataset and exit (scripts/serve.sh uses it)")
    parser.add_argument("--config", type=Path, help="JSON file of build settings (see exporters/config.py)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.SETTING=VALUE",
                        help="override one setting, e.g. grace.epochs=3 (repeatable; applied after --config)")
    # Shortcuts for the settings changed most often.
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-items", type=int, help="simulator.num_items")
    parser.add_argument("--num-users", type=int, help="simulator.num_users")
    parser.add_argument("--grace-examples", type=int, help="grace.examples_per_epoch")
    parser.add_argument("--grace-epochs", type=int, help="grace.epochs")
    parser.add_argument("--max-history", type=int, help="serving.max_history")
    args = parser.parse_args()
    if args.print_repository:
        if not args.dataset:
            parser.error("--print-repository needs --dataset")
        print(repository_for(args.dataset))
        return
    out = args.out or (repository_for(args.dataset) if args.dataset else SOURCE_REPOSITORY)
    shortcuts = {"seed": args.seed, "simulator.num_items": args.num_items, "simulator.num_users": args.num_users,
                 "grace.examples_per_epoch": args.grace_examples, "grace.epochs": args.grace_epochs,
                 "serving.max_history": args.max_history,
                 "dataset": str(args.dataset.resolve()) if args.dataset else None}
    assignments = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + args.set
    try:
        manifest = build(out, load_config(args.config, assignments))
    except DatasetError as exc:
        parser.exit(2, f"error: dataset: {exc}\n")
    print(json.dumps({k: manifest[k] for k in ("dataset", "grace", "recent", "ranking", "onnx_parity_max_abs_diff",
                                               "build_seconds")}, indent=2))
    print(f"model repository ready: {out}")


if __name__ == "__main__":
    main()
