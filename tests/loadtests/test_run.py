"""loadtests.run keeps a locust run that finished but hung on exit, and refuses one that never finished."""

from __future__ import annotations

import pytest

from loadtests.run import run_once

CSV = ("Type,Name,Request Count,Failure Count,Requests/s,Average Response Time,50%,95%,99%\n"
       "grpc,recommend,700,0,35.5,27.7,26,35,61\n,Aggregated,700,0,35.5,27.7,26,35,61\n")


def _fake_locust(prefix: str, finished: bool) -> list[str]:
    """Writes its final CSV, logs its shutdown (if `finished`), then hangs."""
    with open(f"{prefix}.src", "w") as f:
        f.write(CSV)
    shutdown = "echo 'locust.main: Shutting down (exit code 0)'; " if finished else ""
    return ["bash", "-c", f"cp {prefix}.src {prefix}_stats.csv; {shutdown}sleep 60"]


@pytest.mark.timeout(30)
def test_a_run_that_finished_but_hangs_on_exit_keeps_its_figures(tmp_path):
    prefix = str(tmp_path / "c1")
    stats = run_once(_fake_locust(prefix, finished=True), prefix, timeout_s=2)
    assert (stats.requests, stats.failures, stats.p50_ms, stats.p99_ms) == (700, 0, 26, 61)


@pytest.mark.timeout(30)
def test_a_run_that_never_finished_is_an_error(tmp_path):
    prefix = str(tmp_path / "c1")
    with pytest.raises(RuntimeError, match="did not finish"):
        run_once(_fake_locust(prefix, finished=False), prefix, timeout_s=2)
