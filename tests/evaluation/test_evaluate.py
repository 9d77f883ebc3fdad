"""Top-k metrics on hand-computed cases, and the evaluation CLI end to end in --quick mode."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.sequences import leave_last_out
from evaluation import evaluate as ev
from evaluation.baselines import MostPopular
from evaluation.metrics import hit_rate_at_k, ndcg_at_k, target_ranks, topk_metrics

ROOT = Path(__file__).resolve().parents[2]

RANKED = np.array([[5, 3, 9, 1],   # target 5 at rank 0
                   [2, 4, 6, 8],   # target 6 at rank 2
                   [7, 1, 2, 3]])  # target 4 absent
TARGETS = np.array([5, 6, 4])


def test_hit_rate_hand_computed():
    assert target_ranks(RANKED, TARGETS).tolist() == [0, 2, -1]
    assert hit_rate_at_k(RANKED, TARGETS, 1) == pytest.approx(1 / 3)
    assert hit_rate_at_k(RANKED, TARGETS, 2) == pytest.approx(1 / 3)
    assert hit_rate_at_k(RANKED, TARGETS, 3) == pytest.approx(2 / 3)


def test_ndcg_hand_computed():
    assert ndcg_at_k(RANKED, TARGETS, 2) == pytest.approx(1 / 3)
    # Hit at rank 2 gains 1/log2(4) = 0.5.
    assert ndcg_at_k(RANKED, TARGETS, 4) == pytest.approx((1 + 0.5 + 0) / 3)
    one = np.array([[4, 2, 8]])
    assert ndcg_at_k(one, np.array([2]), 3) == pytest.approx(1 / math.log2(3))
    m = topk_metrics(RANKED, TARGETS, ks=(1, 4))
    assert m == pytest.approx({"hr@1": 1 / 3, "ndcg@1": 1 / 3, "hr@4": 2 / 3, "ndcg@4": 0.5})


@pytest.mark.parametrize("args, match", [
    ((RANKED, TARGETS, 0), "k must be in 1..4"),
    ((RANKED, TARGETS, 5), "k must be in 1..4"),
    ((RANKED, TARGETS[:2], 2), "targets must have shape"),
    ((RANKED[0], TARGETS, 2), "2-D"),
    ((RANKED[:0], TARGETS[:0], 1), "no users"),
])
def test_metric_errors(args, match):
    with pytest.raises(ValueError, match=match):
        hit_rate_at_k(*args)
    with pytest.raises(ValueError, match=match):
        ndcg_at_k(*args)


def test_aggregate_mean_and_sample_std():
    recs = [{"dataset": "d", "model": "m", "seed": s, "train_seconds": 1.0, "eval_seconds": 2.0,
             **{k: v for k in ev.METRICS}} for s, v in ((0, 0.2), (1, 0.4))]
    (row,) = ev.aggregate(recs)
    assert row["seeds"] == [0, 1]
    assert row["hr@10"][0] == pytest.approx(0.3) and row["hr@10"][1] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    (single,) = ev.aggregate(recs[:1])
    assert single["ndcg@5"] == (0.2, 0.0)


def test_paired_differences_by_hand():
    """Per-user values averaged over seeds, minus the reference's; the interval is over users and holds 0 only
    when the users could make the difference."""
    def run(model, seed, ranks, dataset="d"):
        return {"dataset": dataset, "model": model, "seed": seed, "target_ranks": ranks}
    ref = [run("sasrec", 0, [0, -1, -1, 3]), run("sasrec", 1, [0, -1, -1, -1])]
    mine = [run("m", 0, [1, 0, -1, 12])]  # rank 12 is outside the top 10: a miss
    (row,) = ev.paired_differences(ref + mine + [run("other", 0, [0, 0])])  # other: different users, skipped
    # HR@10 per user: mine [1, 1, 0, 0], sasrec [1, 0, 0, 0.5] -> differences [0, 1, 0, -0.5]
    assert row["model"] == "m" and row["users"] == 4 and row["hr@10"][0] == pytest.approx(0.125)
    gain = lambda r: 1 / np.log2(r + 2)
    expected = np.mean([gain(1) - gain(0), gain(0), 0, -gain(3) / 2])
    assert row["ndcg@10"][0] == pytest.approx(expected)
    low, high = row["hr@10"][1:]
    assert -0.5 <= low < 0.125 < high <= 1  # means of resampled differences lie within their min and max
    # A clear win over many users has an interval above 0; no reference or no ranks: nothing to pair.
    many = [run("sasrec", 0, [-1] * 200), run("m", 0, [0] * 100 + [-1] * 100)]
    (clear,) = ev.paired_differences(many)
    assert clear["hr@10"][0] == pytest.approx(0.5) and clear["hr@10"][1] > 0.4
    assert ev.paired_differences(mine) == []
    assert ev.paired_differences([{k: v for k, v in r.items() if k != "target_ranks"} for r in ref + mine]) == []
    text = "\n".join(ev.render_paired([clear]))
    assert "Paired against `sasrec`" in text and "| m | 200 | +0.5000 [" in text
    # Each reference the records hold gets its section: here pop30 too, compared with sasrec and m.
    both = ev.paired_differences(many + [run("pop30", 0, [0] * 50 + [-1] * 150)])
    assert [(r["reference"], r["model"]) for r in both] == [("sasrec", "m"), ("sasrec", "pop30"),
                                                              ("pop30", "sasrec"), ("pop30", "m")]
    text = "\n".join(ev.render_paired(both))
    assert text.index("Paired against `sasrec`") < text.index("Paired against `pop30`")
    assert "| m | 200 | +0.2500 [" in text.split("Paired against `pop30`")[1]


def test_eval_subsample_and_registry():
    assert ev.eval_subsample(5, 0).tolist() == [0, 1, 2, 3, 4]
    sub = ev.eval_subsample(100, 10)
    assert len(sub) == 10 and (np.diff(sub) > 0).all() and (sub == ev.eval_subsample(100, 10)).all()
    with pytest.raises(ValueError, match="eval_users"):
        ev.eval_subsample(10, -1)
    with pytest.raises(ValueError, match="already registered"):
        ev.register("mostpop", lambda d, s: MostPopular())
    with pytest.raises(ValueError, match="unknown model"):
        ev.evaluate(["sim"], ["nope"], [0], 10, ev.QUICK_BUDGET, 0, None, "cmd")


def test_cli_quick_on_small_simulator(tmp_path):
    out = tmp_path / "res" / "grace.md"
    cmd = [sys.executable, "-m", "evaluation.evaluate", "--datasets", "sim", "--models", "mostpop", "sasrec",
           "--seeds", "0", "1", "--max-history", "20", "--quick", "--sim-users", "120", "--sim-items", "80",
           "--eval-users", "50", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "python -m evaluation.evaluate --datasets sim --models mostpop sasrec" in text
    assert "| mostpop |" in text and "| sasrec |" in text and "50 (fixed random sample)" in text
    assert "1 thread(s)" in text and "512 examples" in text
    raw = json.loads(out.with_suffix(".json").read_text())
    runs = raw["runs"]
    assert [(r["model"], r["seed"]) for r in runs] == [("mostpop", 0), ("mostpop", 1), ("sasrec", 0), ("sasrec", 1)]
    assert all(r["eval_users"] == 50 and 0 <= r["hr@5"] <= r["hr@10"] <= 1 for r in runs)
    assert all(r["ndcg@10"] <= r["hr@10"] for r in runs)
    assert raw["meta"]["budget"]["max_examples_per_epoch"] == 512
    # Most-popular is deterministic across seeds; the trained model beats it on this simulator.
    assert runs[0]["hr@10"] == runs[1]["hr@10"]
    assert min(r["hr@10"] for r in runs[2:]) > runs[0]["hr@10"]

    # --merge adds a model to the same report; a different budget is refused (one table, one budget).
    add = cmd[:cmd.index("--models") + 1] + ["recent"] + cmd[cmd.index("--seeds"):] + ["--merge"]
    proc = subprocess.run(add, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads(out.with_suffix(".json").read_text())
    assert [r["model"] for r in merged["runs"]] == ["mostpop"] * 2 + ["sasrec"] * 2 + ["recent"] * 2
    assert len(merged["meta"]["commands"]) == 2 and "| recent |" in out.read_text()
    assert "| sasrec |" in out.read_text()
    assert all(len(r["target_ranks"]) == 50 for r in merged["runs"])  # one rank per evaluated user
    assert "Paired against `sasrec`" in out.read_text() and "| recent | 50 |" in out.read_text()
    other = dataclasses.replace(ev.QUICK_BUDGET, epochs=3)
    with pytest.raises(ValueError, match="share the protocol"):
        ev.evaluate(["sim"], ["recent"], [0], 20, other, 50, out, "cmd", merge=True, sim_users=120, sim_items=80)


def test_combine_reports_made_in_parallel(tmp_path):
    """Two runs of the same protocol (different models) become one table; a different budget is refused."""
    kw = dict(sim_users=120, sim_items=80)
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    ev.evaluate(["sim"], ["mostpop"], [0], 20, ev.QUICK_BUDGET, 50, a, "cmd a", **kw)
    ev.evaluate(["sim"], ["recent"], [0, 1], 20, ev.QUICK_BUDGET, 50, b, "cmd b", **kw)
    meta, rows = ev.combine([a.with_suffix(".json"), b.with_suffix(".json")], tmp_path / "all.md", "cmd all")
    assert {r["model"] for r in rows} == {"mostpop", "recent"}
    assert meta["seeds"] == [0, 1] and meta["commands"][-1] == "cmd all"
    text = (tmp_path / "all.md").read_text()
    assert "| mostpop |" in text and "| recent |" in text and "cmd a" in text and "cmd b" in text
    # Runs made at different commits keep each one's: the commands carry it, the meta says so.
    raw = json.loads(b.with_suffix(".json").read_text())
    b.with_suffix(".json").write_text(json.dumps({**raw, "meta": {**raw["meta"], "commit": "abc1234"}}))
    meta, _ = ev.combine([a.with_suffix(".json"), b.with_suffix(".json")], tmp_path / "all.md", "cmd all")
    assert meta["commands"][1].startswith("cmd b") and meta["commands"][1].endswith("[commit abc1234]")
    assert "[commit " in meta["commands"][0] and "abc1234" not in meta["commands"][0]
    assert meta["commit"] == "each command's own (in brackets)"
    # Combined again with a new run: the combined report's commands keep their own marks, nothing is added to them
    # (a mark quoting EACH_OWN made the published block unparseable).
    again, _ = ev.combine([tmp_path / "all.json", b.with_suffix(".json")], tmp_path / "again.md", "cmd again")
    assert again["commands"][:3] == meta["commands"] and "in brackets)]" not in " ".join(again["commands"])
    other = tmp_path / "other.md"
    ev.evaluate(["sim"], ["mostpop"], [0], 20, dataclasses.replace(ev.QUICK_BUDGET, epochs=3), 50, other, "c", **kw)
    with pytest.raises(ValueError, match="budget"):
        ev.combine([a.with_suffix(".json"), other.with_suffix(".json")], tmp_path / "bad.md", "c")


def test_harness_reads_a_dataset_directory(tmp_path):
    """Any dataset of the contract (docs/dataset.md) is a harness dataset; unknown names are refused."""
    from tests.data.fixture_dataset import write_fixture

    directory = write_fixture(tmp_path / "shop")
    seq = ev.load_dataset(str(directory))
    assert seq.num_items == 12 and seq.external_item_ids is not None
    split = leave_last_out(seq, 5)
    recs = MostPopular()
    recs.fit(seq, split.train, seed=0)
    assert recs.recommend(split.test, 3).shape == (len(split.test), 3)
    with pytest.raises(ValueError, match="dataset directory"):
        ev.load_dataset(str(tmp_path / "missing"))


def test_early_stopping_keeps_the_best_state_and_plots_the_curve(tmp_path):
    """--patience: a validation split, a curve per run, the best validation state tested, the curve drawn."""
    out = tmp_path / "res" / "es.md"
    cmd = [sys.executable, "-m", "evaluation.evaluate", "--datasets", "sim", "--models", "sasrec", "grace_dense",
           "--seeds", "0", "--max-history", "10", "--sim-users", "80", "--sim-items", "60", "--eval-users", "30",
           "--epochs", "4", "--patience", "1", "--batch-size", "32", "--lr", "3e-3", "--valid-users", "30",
           "--max-examples", "0", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    for r in runs:
        curve = [p["valid_hr@10"] for p in r["curve"]]
        assert 1 <= len(curve) <= 4 and r["valid_hr@10"] == max(curve)
        stopped_early = len(curve) < 4
        assert not stopped_early or curve.index(max(curve)) == len(curve) - 2  # patience 1: one worse, then stop
    text = out.read_text()
    plots = list(out.parent.glob("es_*.png"))
    assert len(plots) == 1 and plots[0].stat().st_size > 1000
    assert "valid HR@10" in text and "Early stopping" in text and f"({plots[0].name})" in text


def test_refit_retrains_on_the_validation_period_for_the_kept_epochs(tmp_path, monkeypatch):
    """--refit: after early stopping, a fresh model trains on the split without validation (the same test
    targets, more training events) for the epochs early stopping kept, and that model is tested."""
    fits = []
    original = ev.REGISTRY["sasrec"]

    def recording(dataset, seed):
        model = original(dataset, seed)
        fit = model.fit

        def fit_and_record(dataset, train, *, seed, budget, valid=None):
            fits.append((len(train), budget.epochs, budget.patience, valid is not None))
            return fit(dataset, train, seed=seed, budget=budget, valid=valid)
        model.fit = fit_and_record
        return model

    monkeypatch.setitem(ev.REGISTRY, "sasrec", recording)
    budget = dataclasses.replace(ev.QUICK_BUDGET, epochs=4, patience=1, eval_users=0, max_examples_per_epoch=None)
    out = tmp_path / "refit.md"
    for split_kind in ("time", "last"):
        fits.clear()
        _, rows = ev.evaluate(["sim"], ["sasrec", "pop30"], [0], 10, budget, 0, out, "cmd", split_kind=split_kind,
                              refit=True, sim_users=80, sim_items=60)
        (first, second) = fits
        assert first[3] and first[2] == 1 and not second[3] and second[2] == 0
        assert second[0] > first[0]  # the validation period trains too
        run = next(r for r in json.loads(out.with_suffix(".json").read_text())["runs"] if r["model"] == "sasrec")
        assert run["refit_epochs"] == ev.best_epochs(run) == second[1] and run["refit_seconds"] > 0
        assert run["refit_train_examples"] == second[0]
        pop = next(r for r in json.loads(out.with_suffix(".json").read_text())["runs"] if r["model"] == "pop30")
        assert "refit_epochs" in pop and pop["refit_epochs"] is None  # nothing to stop early: refit on all events
        text = out.read_text()
        assert "trained again from scratch" in text and "| refit epochs | refit s |" in text
    with pytest.raises(ValueError, match="patience"):
        ev.evaluate(["sim"], ["sasrec"], [0], 10, ev.QUICK_BUDGET, 0, None, "cmd", refit=True, sim_users=80,
                    sim_items=60)
    assert ev.best_epochs({"curve": [{"step": 5}, {"step": 10}, {"step": 15}], "best_step": 10}) == 2
    assert ev.best_epochs({}) is None


def test_published_grace_table_is_rendered_from_the_committed_result():
    """docs/results/grace.md and BENCHMARKS.md's GRACE section are what the committed result file renders, and
    the learning-curve images they show are committed beside it."""
    from evaluation.pipeline_quality import with_section

    result = ROOT / "docs/results/grace.json"
    raw = json.loads(result.read_text())
    rows = ev.aggregate(raw["runs"])
    md = (ROOT / "docs/results/grace.md").read_text()
    plots = {d["name"]: f"grace_{d['name']}.png" for d in raw["meta"]["datasets"]
             if any(r.get("curve") for r in raw["runs"] if r["dataset"] == d["name"])}
    assert md == ev.render_markdown(raw["meta"], rows, plots, ev.paired_differences(raw["runs"]))
    assert all((ROOT / "docs/results" / name).exists() for name in plots.values())
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    section = ev.benchmark_section(md, Path("docs/results/grace.md"))
    assert with_section(benchmarks, section, ev.SECTION) == benchmarks
