"""Closed-loop gRPC load test of the `recommend` model.

    locust -f loadtests/locustfile.py --headless -u 4 -r 4 -t 20s --host 127.0.0.1:8001

Or via `python -m loadtests.run`. Each user sends seeded random histories of
5..max_history//2 events drawn from the item ids and the event vocabulary the
server publishes (example_item_ids, behaviors; a dataset's ids need not be
1..num_items), k=10, with no think time. Set RECSERVE_LOADTEST_SEED to change
the request stream.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import time
from pathlib import Path

# gRPC's C core blocks the whole gevent loop unless patched, which would serialize
# all users in this process; must run before any channel is created.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

from locust import User, constant, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

# The `locust` console script does not put the repo root on sys.path.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from clients.recommend_client import (  # noqa: E402
    CLIENT_ERROR_CODE,
    RecommendClient,
    RecommendError,
    ServerLimits,
    build_inputs,
    synthetic_history,
)

K = 10
MIN_HISTORY = 5
BASE_SEED = int(os.environ.get("RECSERVE_LOADTEST_SEED", "1234"))
CALL_TIMEOUT_S = 10.0

# Distinct, reproducible seed per spawned user.
_user_index = itertools.count()


def _grpc_target(host: str | None) -> str:
    """Accept `127.0.0.1:8001` as well as `grpc://127.0.0.1:8001` for --host."""
    if not host:
        raise StopUser("no --host given (expected e.g. 127.0.0.1:8001)")
    return host.split("://", 1)[-1].rstrip("/")


class RecommendUser(User):
    wait_time = constant(0)  # closed loop: next request as soon as the previous returns

    def on_start(self) -> None:
        self.rng = random.Random(BASE_SEED + next(_user_index))
        self.client = RecommendClient(_grpc_target(self.host), timeout_s=CALL_TIMEOUT_S)
        start = time.perf_counter()
        try:
            self.limits: ServerLimits = self.client.limits()
        except RecommendError as exc:
            self._fire("limits", start, 0, exc)
            raise StopUser() from exc
        self.max_len = max(MIN_HISTORY, self.limits.max_history // 2)
        self.k = min(K, self.limits.max_k)  # k=10 unless the server allows fewer
        self.t0 = 1_700_000_000 + self.rng.randint(0, 86_400 * 365)

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def _fire(self, name: str, start: float, length: int, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )

    @task
    def recommend(self) -> None:
        length = self.rng.randint(MIN_HISTORY, self.max_len)
        events = synthetic_history(self.limits, length, self.rng, self.t0)
        # Tensors are built before the clock starts: we measure the RPC, not numpy.
        inputs = build_inputs(events, self.k)
        start = time.perf_counter()
        try:
            rec = self.client.infer(inputs)
        except RecommendError as exc:
            self._fire("recommend", start, 0, exc)
            return
        # Without filters the server must fill k; a short answer under load is a bug.
        short = None
        if len(rec.items) != self.k:
            short = RecommendError(CLIENT_ERROR_CODE, f"expected {self.k} items, got {len(rec.items)}")
        self._fire("recommend", start, len(rec.items), short)
