"""A python stub killed, or stopped (hung), under load: no request hangs, the launcher's watchdog reloads the model
(after killing a hung stub), and the server answers as before (equal to the in-process reference) within seconds.
Runs on servers of their own."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from clients import RecommendClient, synthetic_history
from clients.ads_client import AdsClient
from serving.launcher import python_stubs, reload_model
from tests.conftest import calls_in_background, run_server

CLIENT_TIMEOUT_S = 20.0  # far above any healthy answer: a request that reaches it was left hanging
RECOVERY_LIMIT_S = 20.0  # CI machines are slow and shared; the measured figure goes in the closing note


def kill_under_load(server, model: str, call, workers: int = 3, signum: int = signal.SIGKILL) -> dict:
    """Send `signum` to `model`'s stubs (SIGKILL: they die; SIGSTOP: they hang) while `workers` threads call
    `call` in a loop; return what the callers saw."""
    stop, log = threading.Event(), []  # (started, seconds, "ok" or the error)

    def load():
        while not stop.is_set():
            started = time.monotonic()
            try:
                call()
                outcome = "ok"
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and checked below
                outcome = str(exc)
            log.append((started, time.monotonic() - started, outcome))

    threads = [threading.Thread(target=load) for _ in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    heals = len(server.heals)
    # After a hot reload the old instance's stub may still be exiting: kill every stub of the model, so the one
    # that serves is surely among them.
    stubs = [pid for pid, name in python_stubs(server.pid).items() if name == model]
    killed = time.monotonic()
    for stub in stubs:
        with contextlib.suppress(ProcessLookupError):  # an old stub that finished exiting meanwhile
            os.kill(stub, signum)
    try:
        while len(server.heals) == heals:
            assert time.monotonic() - killed < RECOVERY_LIMIT_S, f"{model} was not reloaded"
            time.sleep(0.1)
        heal = server.heals[-1]
        while not any(started > heal.reloaded and outcome == "ok" for started, _, outcome in log):
            assert time.monotonic() - heal.reloaded < CLIENT_TIMEOUT_S, "no answer after the reload"
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    after = [(started, outcome) for started, _, outcome in log if started >= killed]
    return {"heal": heal, "recovered_s": heal.reloaded - killed, "longest_s": max(d for _, d, _ in log),
            "ok_before": sum(o == "ok" for s, _, o in log if s < killed),
            "failed": [o for _, o in after if o != "ok"],
            "ok_after_reload": [o for s, o in after if s > heal.reloaded]}


def under_load(call, action) -> list:
    """Run `action` while threads call `call`; every call must succeed."""
    with calls_in_background(call) as (answers, errors):
        time.sleep(0.5)
        action()
        time.sleep(0.5)
    assert errors == [], errors[:3]
    return answers


def check(seen: dict, model: str, cause: str = "stub died") -> None:
    print(f"{model}: reloaded {seen['recovered_s']:.1f} s after the kill; {len(seen['failed'])} requests failed")
    assert (seen["heal"].model, seen["heal"].cause) == (model, cause)
    assert seen["ok_before"] > 0
    assert seen["longest_s"] < CLIENT_TIMEOUT_S, "a request was left hanging"
    assert seen["recovered_s"] < RECOVERY_LIMIT_S
    assert all(o == "ok" for o in seen["ok_after_reload"]), seen["ok_after_reload"][:3]
    for failure in seen["failed"]:  # refused with a reason, never a deadline or a traceback
        assert "INTERNAL" in failure or "UNAVAILABLE" in failure, failure
        assert "Traceback" not in failure and "DEADLINE" not in failure, failure


def checked_recommend(client, reference, events: int, rng: random.Random):
    """A synthetic history's arrays, and a call that recommends for it and checks the answer equals the reference's."""
    history = synthetic_history(client.limits(), events, rng)
    arrays = ([e.item_id for e in history], [int(e.behavior) for e in history], [e.timestamp for e in history])
    expected_items = reference.recommend(*arrays, 10)[0]

    def recommend():
        got = client.recommend(history, 10)
        np.testing.assert_array_equal([i.item_id for i in got.items], expected_items)

    return arrays, recommend


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_killed_stubs_are_reloaded_under_load_and_nothing_hangs(model_repository, reference):
    rng = random.Random(0)
    with run_server(model_repository) as server:
        with RecommendClient(server.grpc_url, timeout_s=CLIENT_TIMEOUT_S) as client:
            arrays, recommend = checked_recommend(client, reference, 12, rng)

            # A hot reload (same artifacts, new instances) under the same load fails no request.
            seen = under_load(recommend, lambda: reload_model(server.client(), "grace_retrieve",
                                                              server.admin_headers))
            print(f"grace_retrieve hot reload under load: {len(seen)} answers, all equal to the reference")

            check(kill_under_load(server, "grace_retrieve", recommend), "grace_retrieve")

        with AdsClient(server.grpc_url, timeout_s=CLIENT_TIMEOUT_S) as ads:
            campaigns = list(range(min(5, ads.limits().num_campaigns)))
            before = [s.pctr for s in ads.score_ads(*arrays, campaigns)]

            def score():
                assert np.allclose([s.pctr for s in ads.score_ads(*arrays, campaigns)], before, rtol=1e-6)

            check(kill_under_load(server, "score_ads", score), "score_ads")
        assert [heal.model for heal in server.heals] == ["grace_retrieve", "score_ads"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_hung_stub_is_killed_and_reloaded_under_load(model_repository, reference):
    """SIGSTOP keeps the stub's process (so no death is seen) while it answers nothing: only the liveness probe
    can tell. Every python step gets a probe built at start, and answers it."""
    from serving import graph

    rng = random.Random(1)
    with run_server(model_repository, liveness_interval_s=1.0, liveness_timeout_s=3.0) as server:
        assert server.probed_models == tuple(sorted(step.name for step in graph.SERVED_STEPS))
        with RecommendClient(server.grpc_url, timeout_s=CLIENT_TIMEOUT_S) as client:
            _, recommend = checked_recommend(client, reference, 8, rng)

            # Probes under ordinary load never find a healthy step hung.
            under_load(recommend, lambda: time.sleep(4.0))
            assert server.heals == []
            check(kill_under_load(server, "grace_retrieve", recommend, signum=signal.SIGSTOP), "grace_retrieve",
                  cause="stub hung")
        assert [(heal.model, heal.cause) for heal in server.heals] == [("grace_retrieve", "stub hung")]
