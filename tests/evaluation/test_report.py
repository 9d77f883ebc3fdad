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
                 "pipeline_quality_movielens.json"):
        result = json.loads((report.RESULTS / name).read_text())
        for key in ("command", "commit", "date", "machine"):
            assert result.get(key), f"{name} lacks {key}"
        assert result["command"].startswith("python -m ")


def test_a_hand_edited_figure_is_caught(tmp_path, monkeypatch):
    edited = tmp_path / "BENCHMARKS.md"
    text = report.BENCHMARKS.read_text()
    line = next(x for x in text.splitlines() if x.startswith("| 1 | **median** |"))
    edited.write_text(text.replace(line, line.replace("| 0 |", "| 1 |", 1)))
    monkeypatch.setattr(report, "BENCHMARKS", edited)
    assert report.differences() == ["BENCHMARKS.md"]
