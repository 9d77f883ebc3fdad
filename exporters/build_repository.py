"""Build a model repository: the data, then one stage per model family (fit -> write its artifacts -> report
its metrics), the configs rendered from the serving graph, and a check that every step of the graph finds
the artifacts it declares.

    python -m exporters.build_repository --out model_repository [--config build.json] [--set grace.epochs=3]

Writes `<out>/build_manifest.json` with the configuration, each stage's metrics and the ONNX parity figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from data.campaigns import build_campaigns
from data.creatives import catalog_images
from data.sequences import from_world, leave_last_out
from data.simulator import simulate, summary
from evaluation.harness import evaluate_recommender
from evaluation.metrics import topk_metrics
from exporters.clip_export import export_clip
from exporters.config import BuildConfig, load_config
from exporters.onnx_export import PARITY_TOLERANCE, export_grace, export_ranker
from models.ads.llm_hyper import generate_artifact
from models.budget import TrainingBudget
from models.clip.model import VOCAB_FILE as CLIP_VOCAB_FILE, ClipEmbedder
from models.clip.train import train as train_clip
from models.grace.model import save_checkpoint as save_grace
from models.grace.recommender import GraceRecommender
from models.ranking.model import save_checkpoint as save_ranker
from models.ranking.train import train_ranker
from models.reference import CLIP_CHECKPOINT_DIR, MANIFEST
from serving import graph
from serving.calibration import CALIBRATOR_FILE
from serving.catalog import CATEGORY_FILE, save_top_category
from serving.clip.ann_index import build_index, config_for, save_index
from serving.clip.retrieval import ITEM_EMBEDDINGS_FILE, ITEM_INDEX_FILE
from serving.configs import write_configs
from serving.grace.history import TOKENIZER_FILE
from serving.recent import recent_items

SOURCE_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
STEP_ENTRY = "model.py"  # the committed python-backend entry of each step


@dataclasses.dataclass
class Build:
    """What the stages share: the configuration, the data, the serving limits and each step's version folder."""

    config: BuildConfig
    out: Path
    world: object
    limits: object
    parity: dict = dataclasses.field(default_factory=dict)
    shared: dict = dataclasses.field(default_factory=dict)  # values one stage hands to a later one

    def dir(self, step: graph.Step) -> Path:
        path = self.out / step.name / "1"
        path.mkdir(parents=True, exist_ok=True)
        return path


def catalog_stage(b: Build) -> dict:
    """The catalog table of every step that filters items (each declares CATEGORY_FILE in the graph)."""
    steps = [s for s in graph.SERVED_STEPS if CATEGORY_FILE in s.artifacts]
    for step in steps:
        save_top_category(b.dir(step), b.world.catalog.top_category)
    return {"items": int(b.world.catalog.num_items), "categories": int(b.limits.num_categories),
            "written_for": [s.name for s in steps]}


def grace_stage(b: Build) -> dict:
    cfg = b.config.grace
    dataset = from_world(b.world)
    split = leave_last_out(dataset, b.limits.max_history)
    test = split.test.subset(np.arange(min(cfg.eval_users, len(split.test))))
    b.shared["eval_examples"] = test
    retriever = GraceRecommender(cfg.variant, cfg.model)
    metrics = retriever.fit(dataset, split.train, seed=b.config.seed,
                            budget=TrainingBudget(epochs=cfg.epochs, max_examples_per_epoch=cfg.examples_per_epoch,
                                                  batch_size=cfg.batch_size, lr=cfg.lr))
    metrics.update(evaluate_recommender(retriever, test))
    # The encoder's input length limit follows the tokenizer: every step checks it (serving.graph ENC_TOKENS).
    b.limits = dataclasses.replace(b.limits, tokens_per_event=retriever.encoder.tokenizer.tokens_per_event)
    retriever.encoder.save(b.dir(graph.FEATURES))
    retriever.encoder.tokenizer.save(b.dir(graph.GRACE_RETRIEVE) / TOKENIZER_FILE)
    b.parity.update(export_grace(retriever.model, b.dir(graph.GRACE_RETRIEVE), seed=b.config.seed))
    save_grace(retriever.model, b.dir(graph.GRACE_RETRIEVE))  # the in-process reference runs it
    return metrics


def recent_stage(b: Build) -> dict:
    """The recently-interacted source needs only the catalog table; its stage reports what it retrieves alone
    on the held-out users GRACE is evaluated on (same protocol: leave-last-out, top-10)."""
    test = b.shared["eval_examples"]
    eligible = np.ones(b.limits.num_items + 1, bool)
    eligible[0] = False
    ranked = np.zeros((len(test), 10), np.int64)
    for i in range(len(test)):
        items, _ = recent_items(test.histories[i], test.behaviors[i], eligible, min(10, b.limits.recent_candidates))
        ranked[i, :len(items)] = items
    return {"eval_users": len(test), **{k: round(v, 4) for k, v in topk_metrics(ranked, test.targets).items()}}


def clip_stage(b: Build) -> dict:
    """CLIP trained on Fashion-MNIST images paired with catalog titles, exported for clip_embed (ONNX + the
    torch checkpoint the reference uses), and the FAISS item index that clip_retrieve searches."""
    clip_dir = b.dir(graph.CLIP_EMBED) / CLIP_CHECKPOINT_DIR
    sim, catalog = b.config.simulator, b.world.catalog
    metrics = train_clip(clip_dir, b.config.clip, sim)
    embedder = ClipEmbedder.load(clip_dir)
    b.shared["clip"] = embedder
    b.parity.update({f"{graph.CLIP_EMBED.name}/{k}": v for k, v in export_clip(
        embedder.model, b.dir(graph.CLIP_EMBED), clip_dir / CLIP_VOCAB_FILE, seed=b.config.seed).items()})
    # Items are embedded like creatives: their real image of their class and their title.
    item_images = catalog_images(catalog, sim, seed=b.config.seed).item_images
    b.shared["item_images"] = item_images
    ids = np.arange(1, catalog.num_items + 1)
    emb = embedder.embed_creatives(item_images[ids], [catalog.titles[i] for i in ids]).astype(np.float32)
    index_cfg = config_for(len(emb))
    out = b.dir(graph.CLIP_RETRIEVE)
    save_index(build_index(emb, index_cfg, ids), out / ITEM_INDEX_FILE, index_cfg)
    np.save(out / ITEM_EMBEDDINGS_FILE, np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb]))
    return {**metrics, "index": {"items": len(emb), "config": index_cfg.to_dict()}}


def ranker_stage(b: Build) -> dict:
    ranker, calibrator, metrics = train_ranker(b.world, b.config.ranker)
    calibrator.save(b.dir(graph.CALIBRATE) / CALIBRATOR_FILE)
    b.parity.update(export_ranker(ranker, b.dir(graph.RANKER), b.limits.max_history, b.limits.max_candidates,
                                  seed=b.config.seed))
    save_ranker(ranker, b.dir(graph.RANKER))  # the in-process reference runs it
    return metrics


def ads_stage(b: Build) -> dict:
    """Campaigns with creatives and logs; warm LR, LLM-HYPER cold-start weights from the CLIP-nearest warm
    campaigns (retrieval-weighted: no LLM endpoint here), per-family calibrators -> score_ads's artifact."""
    cs = build_campaigns(b.world, seed=b.config.seed)
    emb = b.shared["clip"].embed_creatives(images=b.shared["item_images"][cs.item], texts=list(cs.text))
    meta = generate_artifact(b.world, cs, b.dir(graph.SCORE_ADS), emb.astype(np.float64),
                             "CLIP of the creative image + text, averaged", extra={"seed": b.config.seed})
    return meta["summary"]


# In order: a stage may use what an earlier one handed on (recent evaluates on GRACE's users, ads embeds
# its creatives with the CLIP model).
STAGES = (("catalog", catalog_stage), ("ranking", ranker_stage), ("grace", grace_stage), ("recent", recent_stage),
          ("clip", clip_stage), ("ads", ads_stage))


def missing_artifacts(out: Path) -> list[str]:
    return [f"{step.name}/1/{name}" for step in graph.SERVED_STEPS for name in step.artifacts + (STEP_ENTRY,)
            if not (out / step.name / "1" / name).exists()]


def build(out: Path, config: BuildConfig = BuildConfig()) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    world = simulate(config.simulator)
    limits = config.serving.limits(num_items=world.catalog.num_items, num_categories=config.simulator.num_top_categories,
                                   num_campaigns=config.simulator.num_campaigns)
    out.mkdir(parents=True, exist_ok=True)
    write_configs(out, limits)  # first: a config error should not cost a training run
    b = Build(config, out, world, limits)
    if out.resolve() != SOURCE_REPOSITORY.resolve():
        for step in graph.SERVED_STEPS:
            shutil.copy2(SOURCE_REPOSITORY / step.name / "1" / STEP_ENTRY, b.dir(step) / STEP_ENTRY)
    metrics = {}
    for name, stage in STAGES:
        metrics[name] = stage(b)
    worst = max(b.parity.values())
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: {b.parity} (tolerance {PARITY_TOLERANCE})")
    write_configs(out, b.limits)  # again, with the limits the stages settled (the GRACE tokens per event)
    missing = missing_artifacts(out)
    if missing:
        raise RuntimeError(f"the serving graph declares artifacts that no stage wrote: {missing}")
    manifest = {
        "config": config.to_dict(), "limits": dataclasses.asdict(b.limits), "world": summary(world), **metrics,
        "onnx_parity_max_abs_diff": b.parity, "build_seconds": round(time.perf_counter() - started, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SOURCE_REPOSITORY)
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
    shortcuts = {"seed": args.seed, "simulator.num_items": args.num_items, "simulator.num_users": args.num_users,
                 "grace.examples_per_epoch": args.grace_examples, "grace.epochs": args.grace_epochs,
                 "serving.max_history": args.max_history}
    assignments = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + args.set
    manifest = build(args.out, load_config(args.config, assignments))
    print(json.dumps({k: manifest[k] for k in ("world", "grace", "recent", "ranking", "onnx_parity_max_abs_diff",
                                               "build_seconds")}, indent=2))
    print(f"model repository ready: {args.out}")


if __name__ == "__main__":
    main()
