"""The build's last stage: how the `rank` step orders the candidates, picked on validation users (each
user's second-last event, never a test target) by running the freshly written repository's served steps in process.

1. Source priority (the merge's artifact): the retrieval sources sorted by their own validation NDCG@10 (then HR@10,
   then graph order), so the merge order starts with the source that retrieves best on this data.
2. Final order (the ranker's and the merge's orders mixed): the ranker's relevance is one order, the merge order another;
   serving.recommend.final_order mixes them by rank with one weight, the one with the best validation NDCG@10:
   where the ranker helps (the simulator's repeat intent) it leads, where it hurts (MovieLens-100k, which never
   repeats) the merge order takes over.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from evaluation.metrics import topk_metrics
from models.reference import run_ensemble
from serving import graph
from serving.contract import ServingLimits
from serving.ranking import MERGE_PRIORITY_FILE, ORDERING_FILE
from serving.recommend import final_order
from serving.steps import IMPLEMENTATIONS

# recommend up to its last step: the retrieval whose candidates the rank step orders (run once per user here)
RETRIEVAL = dataclasses.replace(graph.RECOMMEND, steps=graph.RECOMMEND.steps[:-1], outputs=())
assert graph.RECOMMEND.steps[-1] is graph.RANK
MERGE_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))
K = 10


def write_ordering(version_dir: Path, merge_weight: float, validation: dict | None) -> None:
    (version_dir / ORDERING_FILE).write_text(json.dumps({"merge_weight": merge_weight, "validation": validation},
                                                        indent=2) + "\n")


def write_priority(version_dir: Path, names: list[str], validation: dict | None) -> None:
    (version_dir / MERGE_PRIORITY_FILE).write_text(json.dumps({"priority": list(names), "validation": validation},
                                                              indent=2) + "\n")


def candidates_of(repository: Path, limits: ServingLimits, examples, external_ids: np.ndarray) -> list[dict]:
    """For each example: the ranker's relevance, calibrated pCTR and internal ids of its real candidates (in merge
    order), and each retrieval source's own items, from the repository's served steps run in process."""
    steps = {step.name: IMPLEMENTATIONS[step.name].create(repository / step.name / "1", limits)
             for step in graph.RECOMMEND.steps}
    rank = steps[graph.RANK.name]
    rows = []
    for i in range(len(examples)):
        request = {graph.ITEM_IDS.name: external_ids[examples.histories[i]].astype(np.int64),
                   graph.BEHAVIORS.name: np.asarray(examples.behaviors[i], np.int32),
                   graph.TIMESTAMPS.name: np.asarray(examples.timestamps[i], np.int64),
                   graph.K.name: np.array([K], np.int32)}
        out = run_ensemble(RETRIEVAL, steps, request, every_tensor=True)  # rank's inputs, then its candidates
        (c,) = rank.candidates([{t.name: out[t.name] for t in graph.RANK.inputs}])
        real = c.items > 0
        rows.append({"items": c.items[real], "relevance": c.relevance[real], "pctr": rank.calibrator(c.logits[real]),
                     **{source.name: out[source.items.name] for source in graph.RETRIEVAL_SOURCES}})
    return rows


def score_sources(rows: list[dict], targets: np.ndarray) -> dict[str, dict[str, float]]:
    """HR/NDCG@10 of each retrieval source's own top 10 (its items are already filtered for the request)."""
    table = {}
    for source in graph.SOURCE_NAMES:
        ranked = np.zeros((len(rows), K), np.int64)
        for i, row in enumerate(rows):
            top = np.asarray(row[source], np.int64)[:K]
            ranked[i, :len(top)] = top
        table[source] = {m: round(v, 4) for m, v in topk_metrics(ranked, targets).items()}
    return table


def rank_sources(table: dict[str, dict[str, float]]) -> list[str]:
    """Best NDCG@10 first, then HR@10, then graph order."""
    return sorted(graph.SOURCE_NAMES, key=lambda s: (-table[s]["ndcg@10"], -table[s]["hr@10"],
                                                     graph.SOURCE_NAMES.index(s)))


def score_weights(rows: list[dict], targets: np.ndarray) -> dict[float, dict[str, float]]:
    """HR/NDCG@10 of the final order for each candidate weight."""
    table = {}
    for weight in MERGE_WEIGHTS:
        ranked = np.zeros((len(rows), K), np.int64)
        for i, row in enumerate(rows):
            top = row["items"][final_order(row["relevance"], row["pctr"], row["items"], weight)[:K]]
            ranked[i, :len(top)] = top
        table[weight] = {m: round(v, 4) for m, v in topk_metrics(ranked, targets).items()}
    return table


def pick(table: dict[float, dict[str, float]]) -> float:
    """Best NDCG@10 (it weighs every rank of the top 10, so a few hundred users decide it more steadily than the
    hit rate), then HR@10; among equals the smallest weight (the ranker's order, the default)."""
    return max(table, key=lambda w: (table[w]["ndcg@10"], table[w]["hr@10"], -w))


def fit_ordering(repository: Path, limits: ServingLimits, examples, external_ids: np.ndarray) -> dict:
    """Pick the merge's source priority and the final order's merge weight on `examples` (validation users) and
    write them into the rank step's folder; returns the stage's metrics. Without validation examples the graph's source order and the ranker's order stay
    (weight 0) and the manifest says why."""
    version_dir = repository / graph.RANK.name / "1"
    # the rank step loads these; the first pass reads only what does not depend on them
    write_priority(version_dir, list(graph.SOURCE_NAMES), None)
    write_ordering(version_dir, 0.0, None)
    if examples is None or len(examples) == 0:
        return {"merge_weight": 0.0, "source_priority": list(graph.SOURCE_NAMES), "tuned": False,
                "reason": "no validation split (grace.patience = 0)"}
    sources = score_sources(candidates_of(repository, limits, examples, external_ids), examples.targets)
    priority = rank_sources(sources)
    write_priority(version_dir, priority, {"users": len(examples), "by_source": sources})
    table = score_weights(candidates_of(repository, limits, examples, external_ids), examples.targets)
    weight = pick(table)
    validation = {"users": len(examples), "by_merge_weight": {str(w): m for w, m in table.items()}}
    write_ordering(version_dir, weight, validation)
    return {"merge_weight": weight, "source_priority": priority, "tuned": True, "valid_users": len(examples),
            "valid_sources": sources, "valid_ranker_order": table[0.0], "valid_merge_order": table[1.0],
            "valid_chosen": table[weight]}


def refit(repository: Path) -> dict:
    """Pick the source priority and merge weight again on an already built repository (its manifest's data and
    split), e.g. after replacing a step's artifacts; updates the rank step's files and the manifest's
    `ordering` figures."""
    from data.build_data import build_data_of  # noqa: PLC0415 (the build stage gets its data handed over)
    from data.sequences import leave_last_out  # noqa: PLC0415
    from exporters.config import from_dict  # noqa: PLC0415
    from serving.contract import BUILD_MANIFEST  # noqa: PLC0415

    manifest = json.loads((repository / BUILD_MANIFEST).read_text())
    config, limits = from_dict(manifest["config"]), ServingLimits.from_dict(manifest["limits"])
    data = build_data_of(config)
    split = leave_last_out(data.sequences(), limits.max_history, validation=True)
    valid = split.valid.subset(np.arange(min(config.grace.valid_users, len(split.valid))))
    manifest["ordering"] = fit_ordering(repository, limits, valid, data.catalog.item_ids)
    (repository / BUILD_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest["ordering"]


def main(argv: list[str] | None = None) -> None:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m exporters.ordering", description=refit.__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    print(json.dumps(refit(parser.parse_args(argv).repository), indent=2))


if __name__ == "__main__":
    main()
