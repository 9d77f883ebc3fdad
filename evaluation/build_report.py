"""The figures of model builds, from their build manifests committed as result files: one column per dataset.

    python -m evaluation.build_report record --repository REPO --command "the build command" \
        --out docs/results/build_<dataset>.json        # the manifest, with command, commit, date and machine
    python -m evaluation.build_report render docs/results/build_*.json \
        --md docs/results/builds.md --benchmarks BENCHMARKS.md

A figure appears only when a committed result file holds it; tests check that the committed markdown equals
what this renders.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from evaluation.pipeline_quality import with_section
from evaluation.provenance import commit
from kernels.machine import cpu_description
from serving.contract import BUILD_MANIFEST

SECTION = "build_report"


def record(repository: Path, command: str) -> dict:
    manifest = json.loads((Path(repository) / BUILD_MANIFEST).read_text())
    return {"command": command, "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": cpu_description(), "manifest": manifest}


def _get(d: dict, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


ROWS = (
    ("items / users / events", lambda m: " / ".join(str(_get(m, "dataset", k)) for k in ("items", "users", "events"))),
    ("event vocabulary", lambda m: ", ".join(_get(m, "dataset", "events_vocabulary", default=[]))),
    ("repeats excluded from recommendations", lambda m: "yes" if _get(m, "limits", "exclude_history") else "no"),
    ("build wall time (s)", lambda m: _num(m.get("build_seconds"), 1)),
    ("GRACE variant served (validation NDCG@10 / HR@10 of each trained)",
     lambda m: _get(m, "grace", "variant", default="grace_jsa (the only one trained)") + (
         "" if _get(m, "grace", "variant_choice") is None else " (" + ", ".join(
             f"{v} {_num(c['ndcg@10'])} / {_num(c['hr@10'])}" for v, c in _get(m, "grace", "variant_choice").items()) + ")")),
    ("GRACE HR@10 / NDCG@10 (leave-last-out, held-out users)",
     lambda m: f"{_num(_get(m, 'grace', 'hr@10'))} / {_num(_get(m, 'grace', 'ndcg@10'))} "
               f"({_get(m, 'grace', 'eval_users')} users)"),
    ("GRACE train time (s); validation HR@10 of the kept state, at step",
     lambda m: f"{_num(_get(m, 'grace', 'train_seconds'), 1)}; {_num(_get(m, 'grace', 'valid_hr@10'))} at "
               f"{_get(m, 'grace', 'best_step', default='n/a')} of {_get(m, 'grace', 'train_steps', default='n/a')}"),
    *((f"{name} in the same build, HR@10 / NDCG@10 (train s)",
       lambda m, name=name: f"{_num(_get(m, 'grace', 'baselines', name, 'hr@10'))} / "
                            f"{_num(_get(m, 'grace', 'baselines', name, 'ndcg@10'))} "
                            f"({_num(_get(m, 'grace', 'baselines', name, 'train_seconds'), 1)})")
      for name in ("sasrec", "recency", "mostpop")),
    ("semantic IDs: codebooks, collision rate",
     lambda m: f"{' x '.join(map(str, _get(m, 'grace', 'semantic_ids', 'codebook_sizes', default=[])))}, "
               f"{_num(_get(m, 'grace', 'semantic_ids', 'collision_rate'))}"),
    ("recent source alone HR@10 / NDCG@10", lambda m: f"{_num(_get(m, 'recent', 'hr@10'))} / "
                                                      f"{_num(_get(m, 'recent', 'ndcg@10'))}"),
    ("ranker label", lambda m: _get(m, "ranking", "label", default="n/a")),
    ("ranker test AUC; ECE before / after calibration",
     lambda m: f"{_num(_get(m, 'ranking', 'test_calibrated', 'auc'))}; "
               f"{_num(_get(m, 'ranking', 'test_uncalibrated', 'ece_15'))} / "
               f"{_num(_get(m, 'ranking', 'test_calibrated', 'ece_15'))}"),
    ("ranker epochs (early stopping), train time (s)",
     lambda m: f"{_get(m, 'ranking', 'epochs_run')}, {_num(_get(m, 'ranking', 'train_seconds'), 1)}"),
    ("merge's source priority (validation NDCG@10 of each source alone)",
     lambda m: "graph order (built before the priority was picked)" if "source_priority" not in m.get("ordering", {})
               else ", ".join(f"{s} {_num(_get(m, 'ordering', 'valid_sources', s, 'ndcg@10'))}"
                              for s in _get(m, "ordering", "source_priority"))),
    ("final order: merge-order weight; validation NDCG@10 ranker / merge order / chosen",
     lambda m: "n/a (built before the ordering stage)" if "ordering" not in m else
               f"{_num(_get(m, 'ordering', 'merge_weight'), 1)}; "
               f"{_num(_get(m, 'ordering', 'valid_ranker_order', 'ndcg@10'))} / "
               f"{_num(_get(m, 'ordering', 'valid_merge_order', 'ndcg@10'))} / "
               f"{_num(_get(m, 'ordering', 'valid_chosen', 'ndcg@10'))} "
               f"({_get(m, 'ordering', 'valid_users')} users)"),
    ("CLIP image tower", lambda m: _get(m, "clip", "image_tower", default="n/a")),
    ("CLIP held-out image->text / text->image R@10",
     lambda m: f"{_num(_get(m, 'clip', 'validation', 'i2t_recall@10'))} / "
               f"{_num(_get(m, 'clip', 'validation', 't2i_recall@10'))}"),
    ("score_ads", lambda m: (f"not built: {m['not_built']['score_ads']}" if "score_ads" in m.get("not_built", {})
                             else f"warm {_get(m, 'ads', 'sources', 'warm')} / cold-start (hyper) "
                                  f"{_get(m, 'ads', 'sources', 'hyper')} campaigns; test AUC "
                                  f"{_num(_get(m, 'ads', 'test', 'all', 'auc'))}, ECE "
                                  f"{_num(_get(m, 'ads', 'test', 'all', 'ece_15'))}")),
    ("ONNX Runtime vs torch, max abs diff",
     lambda m: f"{max(m.get('onnx_parity_max_abs_diff', {'': 0}).values()):.1e}"),
)


def render_markdown(results: list[dict]) -> str:
    names = [_get(r, "manifest", "dataset", "name", default="?") for r in results]
    lines = ["# Model builds by dataset", "",
             "From each build's `build_manifest.json`, committed as a result file under docs/results/ "
             "(`python -m evaluation.build_report render ...`). The default training budget, not convergence: "
             "these figures say what a build serves, not how the models compare at their best.", ""]
    for name, r in zip(names, results):
        lines.append(f"- {name}: `{r['command']}` at commit {r['commit']}, {r['date']}, {r['machine']}")
    lines += ["", "| figure | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
    for label, value in ROWS:
        lines.append(f"| {label} | " + " | ".join(str(value(r["manifest"])).replace("|", "/") for r in results) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record", help="write a repository's manifest as a result file")
    rec.add_argument("--repository", type=Path, required=True)
    rec.add_argument("--command", required=True, help="the command that built it (recorded verbatim)")
    rec.add_argument("--out", type=Path, required=True)
    ren = sub.add_parser("render", help="render result files as markdown")
    ren.add_argument("results", type=Path, nargs="+")
    ren.add_argument("--md", type=Path)
    ren.add_argument("--benchmarks", type=Path)
    args = parser.parse_args()
    if args.action == "record":
        args.out.write_text(json.dumps(record(args.repository, args.command), indent=2) + "\n")
        return
    table = render_markdown([json.loads(p.read_text()) for p in args.results])
    print(table)
    if args.md:
        args.md.write_text(table)
    if args.benchmarks:
        args.benchmarks.write_text(with_section(args.benchmarks.read_text(), table, SECTION))


if __name__ == "__main__":
    main()
