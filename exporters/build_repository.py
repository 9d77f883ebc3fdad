"""Build the default model repository: simulate data, train the three stages, export ONNX, write the
artifacts each served model needs into its version folder, render and validate the configs.

    python -m exporters.build_repository --out model_repository

Writes `<out>/build_manifest.json` with the training metrics and the ONNX parity figures.
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

from data.sequences import from_world, leave_last_out
from data.simulator import SimConfig, simulate, summary
from exporters.onnx_export import PARITY_TOLERANCE, export_grace, export_ranker
from exporters.repository_configs import PYTHON_MODELS, write_configs
from data.campaigns import build_campaigns
from data.creatives import catalog_images
from exporters.clip_export import export_clip
from models.ann_index import build_index, config_for, save_index
from models.clip import VOCAB_FILE as CLIP_VOCAB_FILE, ClipEmbedder
from models.llm_hyper import generate_artifact
from models.pipeline import ServingLimits
from models.train_clip import TrainConfig as ClipTrainConfig, train as train_clip
from models.baselines import TrainingBudget
from models.grace_recommender import GraceRecommender, GraceTrainConfig, evaluate_recommender
from models.train import TrainConfig, train_ranker

SOURCE_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
MANIFEST = "build_manifest.json"
CLIP_CHECKPOINT_DIR = "clip_model"  # torch checkpoint inside clip_embed/1, for the in-process reference
MAX_CAMPAIGNS = 256


def build_clip(world, sim: SimConfig, seed: int, dirs: dict[str, Path]) -> tuple[dict, dict, dict, np.ndarray]:
    """CLIP trained on Fashion-MNIST images paired with catalog titles, exported for clip_embed (ONNX + the
    torch checkpoint the reference uses), and the FAISS item index that clip_retrieve searches."""
    clip_dir = dirs["clip_embed"] / CLIP_CHECKPOINT_DIR
    metrics = train_clip(clip_dir, ClipTrainConfig(seed=seed), sim)
    embedder = ClipEmbedder.load(clip_dir)
    parity = {f"clip_embed/{k}": v for k, v in export_clip(embedder.model, dirs["clip_embed"],
                                                           clip_dir / CLIP_VOCAB_FILE, seed=seed).items()}
    # Items are embedded like creatives: their real image of their class and their title.
    item_images = catalog_images(world.catalog, sim, seed=seed).item_images
    ids = np.arange(1, world.catalog.num_items + 1)
    emb = embedder.embed_creatives(item_images[ids], [world.catalog.titles[i] for i in ids]).astype(np.float32)
    cfg = config_for(len(emb))
    save_index(build_index(emb, cfg, ids), dirs["clip_retrieve"] / "clip_items.faiss", cfg)
    np.save(dirs["clip_retrieve"] / "clip_item_embeddings.npy", np.concatenate([np.zeros((1, emb.shape[1]),
                                                                                         np.float32), emb]))
    return metrics, parity, {"items": len(emb), "config": cfg.to_dict()}, item_images


def build_score_ads(world, sim: SimConfig, dirs: dict[str, Path], item_images: np.ndarray) -> dict:
    """Campaigns with creatives and logs; warm LR, LLM-HYPER cold-start weights from the CLIP-nearest warm
    campaigns (retrieval-weighted: no LLM endpoint here), per-family calibrators -> score_ads's artifact."""
    cs = build_campaigns(world, seed=sim.seed)
    embedder = ClipEmbedder.load(dirs["clip_embed"] / CLIP_CHECKPOINT_DIR)
    emb = embedder.embed_creatives(images=item_images[cs.item], texts=list(cs.text)).astype(np.float64)
    meta = generate_artifact(world, cs, dirs["score_ads"], emb, "CLIP of the creative image + text, averaged",
                             extra={"seed": sim.seed})
    return meta["summary"]


def build(out: Path, sim: SimConfig, train: TrainConfig) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    world = simulate(sim)
    cat = world.catalog
    limits = ServingLimits(num_items=cat.num_items, num_categories=sim.num_top_categories,
                           max_history=train.max_history, beam_width=train.beam_width,
                           num_campaigns=sim.num_campaigns, max_campaigns=MAX_CAMPAIGNS)

    out.mkdir(parents=True, exist_ok=True)
    write_configs(out, limits)  # first: a config error should not cost a training run
    ranker, calibrator, ranker_metrics = train_ranker(world, train)
    dataset = from_world(world)
    split = leave_last_out(dataset, train.max_history)
    retriever = GraceRecommender("grace_jsa", GraceTrainConfig(max_history=train.max_history,
                                                               beam_width=train.beam_width))
    grace_metrics = retriever.fit(dataset, split.train, seed=train.seed,
                                  budget=TrainingBudget(epochs=train.grace_epochs,
                                                        max_examples_per_epoch=train.grace_examples))
    grace_metrics.update(evaluate_recommender(retriever, split.test.subset(np.arange(min(train.eval_users,
                                                                                         len(split.test))))))
    grace = retriever.model
    dirs = {name: out / name / "1" for name in PYTHON_MODELS}
    if out.resolve() != SOURCE_REPOSITORY.resolve():
        for name, d in dirs.items():
            shutil.copy2(SOURCE_REPOSITORY / name / "1" / "model.py", d / "model.py")

    retriever.encoder.save(dirs["features"])
    retriever.encoder.tokenizer.save(dirs["grace_retrieve"] / "tokenizer.npz")
    for name in ("clip_retrieve", "merge"):
        np.save(dirs[name] / "item_top_category.npy", cat.top_category)
    clip_metrics, clip_parity, ann, item_images = build_clip(world, sim, train.seed, dirs)
    ctr_summary = build_score_ads(world, sim, dirs, item_images)
    calibrator.save(dirs["calibrate"] / "calibrator.npz")
    parity = export_grace(grace, dirs["grace_retrieve"], seed=sim.seed)
    parity.update(clip_parity)
    parity.update(export_ranker(ranker, dirs["ranker"], limits.max_history, limits.max_candidates, seed=sim.seed))
    # Torch checkpoints next to the ONNX files: the in-process reference pipeline runs these.
    torch.save({"config": dataclasses.asdict(grace.cfg), "state": grace.state_dict()}, dirs["grace_retrieve"] / "grace.pt")
    torch.save({"config": dataclasses.asdict(ranker.cfg), "state": ranker.state_dict()}, dirs["ranker"] / "ranker.pt")

    worst = max(parity.values())
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: {parity} (tolerance {PARITY_TOLERANCE})")
    manifest = {
        "simulator": dataclasses.asdict(sim), "train": dataclasses.asdict(train),
        "limits": dataclasses.asdict(limits), "world": summary(world),
        "grace": grace_metrics, "ranker": ranker_metrics, "clip": clip_metrics, "clip_index": ann,
        "score_ads": ctr_summary,
        "onnx_parity_max_abs_diff": parity, "build_seconds": round(time.perf_counter() - started, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SOURCE_REPOSITORY)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-items", type=int, default=SimConfig.num_items)
    parser.add_argument("--num-users", type=int, default=SimConfig.num_users)
    parser.add_argument("--grace-examples", type=int, default=TrainConfig.grace_examples,
                        help="GRACE training examples per epoch")
    parser.add_argument("--grace-epochs", type=int, default=TrainConfig.grace_epochs)
    parser.add_argument("--max-history", type=int, default=TrainConfig.max_history)
    args = parser.parse_args()
    manifest = build(args.out, SimConfig(seed=args.seed, num_items=args.num_items, num_users=args.num_users),
                     TrainConfig(seed=args.seed, grace_examples=args.grace_examples, grace_epochs=args.grace_epochs,
                                 max_history=args.max_history))
    print(json.dumps({k: manifest[k] for k in ("world", "grace", "ranker", "onnx_parity_max_abs_diff",
                                               "build_seconds")}, indent=2))
    print(f"model repository ready: {args.out}")


if __name__ == "__main__":
    main()
