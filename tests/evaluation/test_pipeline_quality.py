"""End-to-end quality of the reference pipeline on the build's held-out users, and the source ablations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.pipeline_quality import evaluate_pipeline, held_out_examples
from exporters.config import from_dict
from models.reference import MANIFEST
from serving import graph


@pytest.fixture(scope="module")
def examples(model_repository):
    config = from_dict(json.loads((model_repository / MANIFEST).read_text())["config"])
    return held_out_examples(config, 12)


def test_manifest_config_round_trips(model_repository):
    recorded = json.loads((model_repository / MANIFEST).read_text())["config"]
    assert json.loads(json.dumps(from_dict(recorded).to_dict())) == recorded


def test_every_source_ablation_removes_exactly_that_source(reference, examples):
    full = evaluate_pipeline(reference, examples)
    assert full["users"] == 12 and 0.0 <= full["hr@10"] <= 1.0
    assert abs(sum(full["top_k_share_by_source"].values()) - 1.0) < 1e-3
    for name in graph.SOURCE_NAMES:
        ablated = evaluate_pipeline(reference, examples, without=name)
        assert ablated["top_k_share_by_source"][name] == 0.0
        assert 0.0 <= ablated["hr@10"] <= 1.0
        alone = evaluate_pipeline(reference, examples, only=name)
        others = [n for n in graph.SOURCE_NAMES if n != name]
        assert all(alone["top_k_share_by_source"][n] == 0.0 for n in others)
        assert 0.0 <= alone["merge_order"]["hr@10"] <= 1.0


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_replay_through_the_running_server(model_repository, triton_server):
    """The gRPC replay: the server's recommend over gRPC equals the graph run step by step on the same server,
    every row is measured on the same users, and the baselines sit beside them."""
    from evaluation.pipeline_quality import render_markdown, run

    result = run(model_repository, 8, triton_server.grpc_url, "cmd")
    assert result["mode"] == "served over gRPC" and result["served"]["users"] == 8
    assert result["served"]["served_equals_steps"] == 1.0
    assert result["served"]["hr@10"] == result["all_sources"]["hr@10"]
    for name in graph.SOURCE_NAMES:
        assert result[f"only_{name}"]["users"] == result[f"without_{name}"]["users"] == 8
    assert {"mostpop", "recency"} <= set(result) and result["recency"]["users"] == 8
    text = render_markdown(result)
    assert "| served | 8 |" in text and "| only_grace | 8 |" in text and "| recency | 8 |" in text


def test_markdown_has_one_row_per_configuration(reference, examples):
    from evaluation.pipeline_quality import render_markdown

    row = evaluate_pipeline(reference, examples.subset(np.arange(3)))
    result = {"command": "cmd", "commit": "abc", "date": "today", "machine": "cpu", "all_sources": row,
              "without_recent": row, "recency": {"users": 3, "hr@10": 0.5, "ndcg@10": 0.2, "hr@5": 0.1}}
    text = render_markdown(result)
    assert "| all_sources | 3 |" in text and "| without_recent | 3 |" in text and "| recency | 3 |" in text
    assert all(f"{name} share of top-10" in text for name in graph.SOURCE_NAMES)


def test_published_tables_are_rendered_from_the_committed_result():
    """docs/results/pipeline_quality.md and BENCHMARKS.md's section equal what the result file renders."""
    from pathlib import Path

    from evaluation.pipeline_quality import render_markdown, with_section

    root = Path(__file__).resolve().parents[2]
    result = json.loads((root / "docs/results/pipeline_quality.json").read_text())
    assert (root / "docs/results/pipeline_quality.md").read_text() == render_markdown(result)
    benchmarks = (root / "BENCHMARKS.md").read_text()
    assert with_section(benchmarks, render_markdown(result)) == benchmarks


def test_build_figures_are_rendered_from_the_committed_manifests():
    """docs/results/builds.md and BENCHMARKS.md's build section equal what the committed manifests render."""
    from pathlib import Path

    from evaluation.build_report import SECTION, render_markdown
    from evaluation.pipeline_quality import with_section

    root = Path(__file__).resolve().parents[2]
    results = [json.loads((root / "docs/results" / name).read_text())
               for name in ("build_simulator.json", "build_movielens.json")]
    assert all({"command", "commit", "date", "machine", "manifest"} <= set(r) for r in results)
    table = render_markdown(results)
    assert (root / "docs/results/builds.md").read_text() == table
    benchmarks = (root / "BENCHMARKS.md").read_text()
    assert with_section(benchmarks, table, SECTION) == benchmarks and "<!-- build_report: begin -->" in benchmarks
