"""loadtests.perf_sweep: NVIDIA perf_analyzer (fetched from the tritonclient 2.41.0 wheel) against the real server
with a tiny budget, and the parsing of its per-step report."""

from __future__ import annotations

import json

import pytest

from loadtests.perf_sweep import main, parse_steps, render
from serving import graph

PERF_ANALYZER_STDOUT = """\
  Composing models:
  features, version: 1
      Inference count: 701
      Execution count: 590
      Successful request count: 701
      Avg request latency: 1182 usec (overhead 4 usec + queue 318 usec + compute input 39 usec + compute infer 754 usec + compute output 66 usec)

  ranker, version: 1
      Inference count: 701
      Avg request latency: 2509 usec (overhead 3 usec + queue 341 usec + compute input 28 usec + compute infer 2042 usec + compute output 94 usec)
"""


def test_per_step_times_are_read_from_perf_analyzer_output():
    steps = parse_steps(PERF_ANALYZER_STDOUT)
    assert list(steps) == ["features", "ranker"]
    assert steps["features"] == {"avg_ms": 1.182, "queue_ms": 0.318, "compute_ms": pytest.approx(0.859)}
    assert steps["ranker"]["compute_ms"] == pytest.approx(2.164)


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_perf_analyzer_sweep_on_the_real_server(triton_server, model_repository, tmp_path):
    out = tmp_path / "perf_sweep.json"
    ads = ["--ads-concurrency", "1"] if (model_repository / graph.SCORE_ADS.name / "config.pbtxt").exists() else \
        ["--ads-concurrency"]
    assert main(["--url", triton_server.grpc_url, "--concurrency", "1", "2", *ads, "--requests", "10",
                 "--campaigns", "5", "--interval-ms", "1000", "--stability", "100", "--max-trials", "3",
                 "--server-pid", str(triton_server.pid), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"command", "commit", "date", "machine"} <= set(result)
    recommend = [p for p in result["points"] if p["model"] == graph.RECOMMEND.name]
    assert [p["concurrency"] for p in recommend] == [1, 2]
    for point in result["points"]:
        assert point["req_per_s"] > 0
        if point["stable"]:  # an unstable point (no windows agreed) keeps the last window's throughput and mean
            assert 0 < point["p50_ms"] <= point["p99_ms"]
            if point["model"] == graph.RECOMMEND.name:
                # perf_analyzer reports every composing step of the ensemble from Triton's statistics
                assert set(point["steps"]) == {step.name for step in graph.RECOMMEND.steps}
        else:
            assert point["avg_ms"] > 0
        # CPU per request by process: the server, every step of the model's graph, the load generator
        cpu = point["cpu_ms_per_request"]
        steps = {s.name for s in graph.RECOMMEND.steps} if point["model"] == graph.RECOMMEND.name else {point["model"]}
        assert {"tritonserver", "perf_analyzer"} | steps <= set(cpu)
        assert all(cpu[name] > 0 for name in {"tritonserver", "perf_analyzer"} | steps)
    assert "| recommend | 2 |" in render(result)
    assert "CPU ms per request by process" in render(result)


def test_cpu_per_request_divides_each_process_time_by_the_requests_completed():
    from loadtests.perf_sweep import cpu_per_request

    got = cpu_per_request({"tritonserver": 1.0, "ranker": 2.0}, {"tritonserver": 1.5, "ranker": 2.2, "merge": 0.1},
                          load_generator_s=0.3, wall_s=10.0, req_per_s=50.0)
    # 500 requests: 0.5 s of tritonserver is 1 ms each; a process that appeared meanwhile counts from zero
    assert got == {"tritonserver": 1.0, "ranker": 0.4, "merge": 0.2, "perf_analyzer": 0.6}
    assert cpu_per_request({}, {}, 0.0, 10.0, 0.0) == {}


def test_server_processes_finds_a_process_tree_or_nothing():
    import os

    from loadtests.perf_sweep import server_processes

    assert server_processes(os.getpid()) == {os.getpid(): "tritonserver"}  # this process has no python stubs
    assert server_processes(2 ** 22 + 7) == {}  # beyond Linux's pid_max: no such process
