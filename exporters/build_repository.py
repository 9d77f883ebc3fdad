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

from data.simulator import SimConfig, simulate, summary
from exporters.onnx_export import PARITY_TOLERANCE, export_grace, export_ranker
from exporters.repository_configs import PYTHON_MODELS, write_configs
from models.pipeline import ServingLimits
from models.tokenizer import ItemTokenizer
from models.train import TrainConfig, train_grace, train_ranker

SOURCE_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
MANIFEST = "build_manifest.json"


def build(out: Path, sim: SimConfig, train: TrainConfig) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    world = simulate(sim)
    cat = world.catalog
    tokenizer = ItemTokenizer.from_catalog(cat.top_category, cat.leaf_category, cat.brand, cat.price_bucket)
    limits = ServingLimits(num_items=cat.num_items, num_categories=sim.num_top_categories,
                           max_history=train.max_history, beam_width=train.beam_width)

    out.mkdir(parents=True, exist_ok=True)
    write_configs(out, limits)  # first: a config error should not cost a training run
    ranker, calibrator, ranker_metrics = train_ranker(world, train)
    grace, grace_metrics = train_grace(world, tokenizer, train)
    dirs = {name: out / name / "1" for name in PYTHON_MODELS}
    if out.resolve() != SOURCE_REPOSITORY.resolve():
        for name, d in dirs.items():
            shutil.copy2(SOURCE_REPOSITORY / name / "1" / "model.py", d / "model.py")

    for name in ("features", "grace_retrieve"):
        tokenizer.save(dirs[name] / "tokenizer.npz")
    np.save(dirs["knn_retrieve"] / "item_vectors.npy",
            ranker.item_vectors(torch.arange(cat.num_items + 1)).detach().numpy().astype(np.float32))
    for name in ("knn_retrieve", "merge"):
        np.save(dirs[name] / "item_top_category.npy", cat.top_category)
    calibrator.save(dirs["calibrate"] / "calibrator.npz")
    parity = export_grace(grace, dirs["grace_retrieve"], seed=sim.seed)
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
        "grace": grace_metrics, "ranker": ranker_metrics,
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
    parser.add_argument("--grace-examples", type=int, default=TrainConfig.grace_examples)
    parser.add_argument("--max-history", type=int, default=TrainConfig.max_history)
    args = parser.parse_args()
    manifest = build(args.out, SimConfig(seed=args.seed, num_items=args.num_items, num_users=args.num_users),
                     TrainConfig(seed=args.seed, grace_examples=args.grace_examples, max_history=args.max_history))
    print(json.dumps({k: manifest[k] for k in ("world", "grace", "ranker", "onnx_parity_max_abs_diff",
                                               "build_seconds")}, indent=2))
    print(f"model repository ready: {args.out}")


if __name__ == "__main__":
    main()
