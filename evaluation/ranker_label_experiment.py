"""Experiment: a built repository's served pipeline with its ranker retrained on another label source
(`ranker.labels`: events = next interaction against sampled items, instead of clicked organic impressions),
everything else unchanged; then evaluation.pipeline_quality on the copy.

    python -m evaluation.ranker_label_experiment --repository model_repository --labels events --out /tmp/repo_events
    python -m evaluation.pipeline_quality --repository /tmp/repo_events --out /tmp/ranker_events.json \
        --md /tmp/ranker_events.md

No result of it is committed: a figure under docs/results/ must be rendered by `python -m evaluation.report`
(register the result file there first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch

from data.build_data import build_data_of
from exporters.config import from_dict
from models.ranking.model import save_checkpoint
from models.ranking.train import train_ranker
from serving import graph
from serving.calibration import CALIBRATOR_FILE
from serving.contract import BUILD_MANIFEST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--labels", choices=("auto", "impressions", "events"), required=True)
    parser.add_argument("--out", type=Path, required=True, help="the copy to write (replaced)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.repository, args.out)
    manifest = json.loads((args.repository / BUILD_MANIFEST).read_text())
    config = from_dict(manifest["config"])
    ranker, calibrator, metrics = train_ranker(build_data_of(config),
                                               dataclasses.replace(config.ranker, labels=args.labels))
    # The in-process reference (evaluation.pipeline_quality) runs the torch checkpoint and the calibrator.
    save_checkpoint(ranker, args.out / graph.RANK.name / "1")
    calibrator.save(args.out / graph.RANK.name / "1" / CALIBRATOR_FILE)
    manifest["ranking"] = metrics
    (args.out / BUILD_MANIFEST).write_text(json.dumps(manifest, indent=2))
    print(json.dumps({k: metrics[k] for k in ("label", "epochs_run", "test_calibrated", "train_seconds")}, indent=1))


if __name__ == "__main__":
    main()
