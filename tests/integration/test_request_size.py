"""Oversized requests against the real repository behind the launcher's proxy: refused with INVALID_ARGUMENT
naming the limit before they reach tritonserver, and the server and its stubs hold no more memory afterwards."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from clients import RecommendClient, synthetic_history
from serving.launcher import TritonServer, free_ports, python_stubs
from serving.proxy import DEFAULT_MAX_REQUEST_BYTES, ProxySettings

from ..serving.test_proxy import needs_nginx

OVERSIZED = 16 * 2**20  # bytes of item_ids per request
MEMORY_SLACK = 100 * 2**20  # the most the server and its stubs together may grow


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def server_rss(server: TritonServer) -> int:
    return rss_bytes(server.pid) + sum(rss_bytes(pid) for pid in python_stubs(server.pid))


@needs_nginx
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_oversized_requests_are_refused_at_the_edge_and_leave_no_memory(model_repository, reference):
    grpc_port, http_port, metrics_port = free_ports(3)
    server = TritonServer(model_repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                          proxy=ProxySettings())
    server.start(ready_timeout_s=180)
    try:
        with RecommendClient(server.grpc_url, timeout_s=60) as client:
            history = synthetic_history(client.limits(), 10, random.Random(0))
            arrays = ([e.item_id for e in history], [int(e.behavior) for e in history], [e.timestamp for e in history])
            expected = reference.recommend(*arrays, 10)[0]
            assert [i.item_id for i in client.recommend(history, 10).items] == expected.tolist()
            before = server_rss(server)

            raw = grpcclient.InferenceServerClient(server.grpc_url)
            huge = np.ones((1, OVERSIZED // 8), np.int64)
            tensors = [grpcclient.InferInput(name, [1, huge.shape[1]], dtype)
                       for name, dtype in (("item_ids", "INT64"), ("behaviors", "INT32"), ("timestamps", "INT64"))]
            for tensor, dtype in zip(tensors, (np.int64, np.int32, np.int64)):
                tensor.set_data_from_numpy(huge.astype(dtype))
            k = grpcclient.InferInput("k", [1, 1], "INT32")
            k.set_data_from_numpy(np.array([[10]], np.int32))
            for target in ("recommend", "grace_retrieve", "side_retrieve"):  # internal steps sit behind the same edge
                for _ in range(3):
                    with pytest.raises(Exception) as refused:
                        raw.infer(target, [*tensors, k], client_timeout=60)
                    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", refused.value
                    assert f"limit of {DEFAULT_MAX_REQUEST_BYTES / 2**20:g} MiB" in refused.value.message()
            raw.close()

            assert [i.item_id for i in client.recommend(history, 10).items] == expected.tolist()
            grown = server_rss(server) - before
            print(f"server + stubs RSS after 9 refused {OVERSIZED >> 20} MiB requests: {grown / 2**20:+.1f} MiB")
            assert grown < MEMORY_SLACK, grown
    finally:
        server.stop()
