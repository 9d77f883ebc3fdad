"""exporters.softmax_bench on the built repository: GRACE exported with and without the Softmax floor serves the
same items with the same scores at every history length, and the result renders."""

import json

from exporters import softmax_bench


def test_softmax_bench_runs_side_by_side(model_repository, tmp_path):
    out = tmp_path / "floor.json"
    softmax_bench.main(["--repository", str(model_repository), "--events", "3", "9", "--requests", "3", "--rounds", "1", "--op-runs", "3",
                        "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["identical_results"] is True and result["requests"] == 3
    assert [length["events"] for length in result["lengths"]] == [3, 9]
    for length in result["lengths"]:
        assert set(length["variants"]) == {"no_floor", "floor"}
        assert length["floor_over_no_floor_request_p50"] > 0 and length["floor_over_no_floor_encoder_p50"] > 0
    text = softmax_bench.render([result, result])
    assert "| 9 | floor |" in text and result["command"] in text


def test_the_softmax_node_alone_is_timed_at_each_masked_fraction():
    rows = softmax_bench.softmax_op_times(runs=2)
    assert [r["masked"] for r in rows] == list(softmax_bench.MASKED_FRACTIONS)
    assert all(r["no_floor_p50_us"] > 0 and r["floor_p50_us"] > 0 for r in rows)
