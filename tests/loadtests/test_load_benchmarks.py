"""The published load-test chain (scripts/load_benchmarks.sh, which made BENCHMARKS.md's load figures) runs as
written, on a tiny budget, against the session's model repository."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ("load_recommend_c1.json", "load_recommend_c4.json", "latency_score_ads.json", "latency_score_ads_direct.json",
           "latency_clip_embed.json", "soak.json")


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_load_benchmark_chain_runs_and_writes_every_result(model_repository, tmp_path):
    env = {**os.environ, "DURATION": "2", "REPEAT": "1", "REQUESTS": "20", "SOAK_S": "2", "SOAK_RATE": "5"}
    done = subprocess.run(["bash", "scripts/load_benchmarks.sh", str(model_repository), str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in RESULTS:
        result = json.loads((tmp_path / name).read_text())
        assert result["command"].startswith("python -m loadtests.") and result["commit"] and result["machine"]
    assert json.loads((tmp_path / "load_recommend_c4.json").read_text())["ok"]
    soak = json.loads((tmp_path / "soak.json").read_text())["result"]
    assert soak["requests"] == 10 and soak["failures"] == 0
