"""loadtests.throughput on the real server, a tiny budget: the interleaved in-process/served comparison agrees on
every answer, the closed-loop runs answer without errors, and the result renders and plots."""

from __future__ import annotations

import json

import pytest

from loadtests.throughput import main, render


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_throughput_command_on_the_real_server(triton_server, model_repository, tmp_path):
    out, png = tmp_path / "throughput.json", tmp_path / "throughput.png"
    longest = json.loads((model_repository / "build_manifest.json").read_text())["limits"]["max_history"]
    direct = f"127.0.0.1:{triton_server.upstream_grpc_port}"
    assert main(["--host", triton_server.grpc_url, "--direct-host", direct, "--repository", str(model_repository),
                 "--requests", "30", "--concurrency", "1", "3", "--duration", "2", "--history-lengths", "4", str(longest),
                 "--length-requests", "5", "--out", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert {"command", "commit", "date", "machine"} <= set(result)
    c1 = result["interleaved"]
    assert c1["same_top_k"] == 1.0  # the served pipeline answers what its own steps answer in process
    assert c1["in_process"]["requests"] == c1["served"]["requests"] == c1["served_direct"]["requests"] == 30
    assert c1["direct_over_in_process_p50"] > 0 and "tritonserver's own port" in render(result)
    from serving import graph
    steps = c1["in_process_step_p50_ms"]
    assert list(steps) == [step.name for step in graph.RECOMMEND.steps] and all(ms > 0 for ms in steps.values())
    assert sum(steps.values()) <= c1["in_process"]["p50_ms"] * 1.5  # the steps are the in-process request
    server = c1["server_side_mean_ms"]  # the served and the direct requests, both answered by tritonserver
    assert list(server) == ["recommend"] + list(steps) and server["recommend"]["requests"] == 60
    assert all(r["requests"] >= 60 for r in server.values())  # the steps also answer the liveness probes
    for name in steps:
        assert 0 < server[name]["compute_infer"] <= server[name]["success"] <= server["recommend"]["success"]
    assert "| recommend | 60 |" in render(result)
    assert [r["concurrency"] for r in result["closed_loop"]] == [1, 3]
    for run in result["closed_loop"]:
        assert run["errors"] == 0 and run["requests"] > 0 and run["req_per_s"] > 0
        assert run["p50_ms"] <= run["p99_ms"]
    assert "| 3 |" in render(result) and png.stat().st_size > 1000
    by_length = result["by_history_length"]
    assert [r["events"] for r in by_length] == [4, longest]
    assert all(r["server_side_mean_ms"]["recommend"]["requests"] == 5 for r in by_length)
    for r in by_length:  # exactly that many events, answered alike in process and served
        assert r["same_top_k"] == 1.0 and r["served"]["requests"] == 5
    assert f"| {longest} | 5 |" in render(result)
    with pytest.raises(SystemExit):  # longer than the server serves: refused before any request
        main(["--host", triton_server.grpc_url, "--repository", str(model_repository),
              "--history-lengths", str(longest + 1)])
