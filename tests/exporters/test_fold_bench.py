"""exporters.fold_bench on the built repository: both exports of its GRACE serve the same items and scores, and
the folded files run fewer kernels."""

import json

from exporters import fold_bench
from serving.grace.retriever import DECODER_STEP_FILE, ENCODER_FILE


def test_fold_bench_runs_side_by_side(model_repository, tmp_path):
    out = tmp_path / "fold.json"
    fold_bench.main(["--repository", str(model_repository), "--requests", "4", "--rounds", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["identical_results"] is True and result["requests"] == 4
    exported, folded = result["variants"]["as_exported"], result["variants"]["folded"]
    assert folded["kernels"][DECODER_STEP_FILE] < exported["kernels"][DECODER_STEP_FILE]
    assert folded["kernels"][ENCODER_FILE] <= exported["kernels"][ENCODER_FILE]
    assert result["folded_over_exported_p50"] > 0 and folded["p50_ms"] > 0
