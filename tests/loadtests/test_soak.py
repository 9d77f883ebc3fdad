"""The bounded soak command against the session's real server (its committed result is checked by test_report)."""

from __future__ import annotations

import pytest

from loadtests import soak


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_short_soak_counts_every_request_and_reads_memory(triton_server):
    outcome = soak.soak(triton_server.grpc_url, rate=20, duration_s=4, window_s=2, server_pid=triton_server.pid)
    assert outcome["requests"] == 80
    assert outcome["failures"] == 0, outcome["errors"]
    assert [w["start_s"] for w in outcome["windows"]] == [0, 2]
    assert sum(w["requests"] for w in outcome["windows"]) == 80
    assert all(w["p99_ms"] >= w["p50_ms"] > 0 for w in outcome["windows"])
    for snapshot in (outcome["memory_start_mib"], outcome["memory_end_mib"]):
        assert snapshot["tritonserver"] > 0 and "stub grace_retrieve" in snapshot
