"""Every generated table equals what its committed result files render: a figure edited by hand, or a result file
changed without re-rendering, fails here."""

from __future__ import annotations

import json

from evaluation import report


def test_benchmarks_and_result_pages_equal_their_rendering_from_committed_results():
    assert report.differences() == [], "run: python -m evaluation.report"


def test_every_json_result_says_where_it_came_from():
    for name in ("soak.json", "load_recommend_c1.json", "load_recommend_c4.json", "latency_score_ads.json",
                 "latency_score_ads_direct.json", "latency_clip_embed.json", "pipeline_quality.json",
                 "pipeline_quality_movielens.json", "build_simulator.json", "build_movielens.json", "ctr.json",
                 "ann_sweep.json", "kernels_cpu.json", "jsa_compute.json"):
        result = json.loads((report.RESULTS / name).read_text())
        for key in ("command", "commit", "date", "machine"):
            assert result.get(key), f"{name} lacks {key}"
        assert "python -m " in result["command"]


def test_a_hand_edited_figure_is_caught(tmp_path, monkeypatch):
    edited = tmp_path / "BENCHMARKS.md"
    text = report.BENCHMARKS.read_text()
    line = next(x for x in text.splitlines() if x.startswith("| 1 | **median** |"))
    edited.write_text(text.replace(line, line.replace("| 0 |", "| 1 |", 1)))
    monkeypatch.setattr(report, "BENCHMARKS", edited)
    assert report.differences() == ["BENCHMARKS.md"]


def test_every_generated_page_has_a_renderer_and_no_result_lies_unused():
    """Each docs/results/*.md and *.csv is rendered by the report (so --check covers it), and each committed
    result file is read by some rendering."""
    rendered = set(report.FILES)
    for path in sorted(report.RESULTS.glob("*.md")) + sorted(report.RESULTS.glob("*.csv")):
        assert path.name in rendered, f"{path.name} is not rendered by evaluation.report"
    sources = (report.ROOT / "evaluation" / "report.py").read_text()
    for path in sorted(report.RESULTS.glob("*.json")):
        assert f'"{path.name}"' in sources or f'"{path.stem}"' in sources, f"{path.name}: nothing renders it"


def test_a_hand_edited_page_is_caught(tmp_path, monkeypatch):
    """A figure edited by hand in a page rendered from a result file (here the CTR table) is named by --check."""
    results = _copy_of_the_docs(tmp_path, monkeypatch)
    page = results / "ctr.md"
    text = page.read_text()
    row = next(x for x in text.splitlines() if x.startswith("| LR-warm"))
    page.write_text(text.replace(row, row.replace("| 0.", "| 1.", 1)))
    assert report.differences() == ["docs/results/ctr.md"]


def _copy_of_the_docs(tmp_path, monkeypatch):
    """docs/results, BENCHMARKS.md and docs/operations.md copied under tmp_path, the report pointed there."""
    results = tmp_path / "docs" / "results"
    results.mkdir(parents=True)
    for path in report.RESULTS.iterdir():
        if path.is_file():
            (results / path.name).write_bytes(path.read_bytes())
    (tmp_path / "BENCHMARKS.md").write_text(report.BENCHMARKS.read_text())
    (tmp_path / "docs" / "operations.md").write_text((report.ROOT / "docs" / "operations.md").read_text())
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    return results


def test_a_hand_edited_operations_figure_is_caught(tmp_path, monkeypatch):
    """docs/operations.md's pod figures are a rendered section: a figure typed over is named by --check."""
    _copy_of_the_docs(tmp_path, monkeypatch)
    doc = tmp_path / "docs" / "operations.md"
    text = doc.read_text()
    row = next(x for x in text.splitlines() if x.startswith("| `recommend` perf_analyzer"))
    doc.write_text(text.replace(row, row.replace("req/s", "req/s (typed)", 1)))
    assert report.differences() == ["docs/operations.md"]
    doc.write_text(text)
    assert report.differences() == []
