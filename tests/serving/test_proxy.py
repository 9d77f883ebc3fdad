"""The request-size limit: nginx in front of tritonserver refuses an oversized body while reading it (gRPC:
INVALID_ARGUMENT naming the limit; HTTP: 413), and the largest valid request of every public model fits. The
bound on requests in flight: beyond it a request is refused at once (gRPC: UNAVAILABLE; HTTP: 503)."""

from __future__ import annotations

import json
import math
import threading
import time
import ssl
import urllib.error
import urllib.request

import numpy as np
import pytest

from serving import graph
from serving.contract import ServingLimits
from serving.launcher import Tls
from serving.proxy import DEFAULT_MAX_REQUEST_BYTES, NginxProxy, ProxyError, ProxySettings
from serving.steps import MAX_TEXT_BYTES

from .test_launcher import add_one_repo, infer_add_one, make_server, write_model  # noqa: F401 - fixture

grpcclient = pytest.importorskip("tritonclient.grpc")
def _has_nginx() -> bool:
    try:
        NginxProxy.binary()
    except ProxyError:
        return False
    return True


needs_nginx = pytest.mark.skipif(not _has_nginx(),
                                 reason="nginx is not installed (scripts/setup.sh installs Debian's nginx-light)")
ITEM_SIZE = {"INT64": 8, "INT32": 4, "FP32": 4, "UINT8": 1, "BOOL": 1}


# The published limit on each variable-length input of the public models (ServingLimits fields).
VARIABLE_LENGTHS = {
    "recommend": {"item_ids": "max_history", "behaviors": "max_history", "timestamps": "max_history",
                  "exclude_item_ids": "max_exclude", "category_ids": "num_categories"},
    "score_ads": {"item_ids": "ads_max_history", "behaviors": "ads_max_history", "timestamps": "ads_max_history",
                  "campaign_ids": "max_campaigns"},
    "clip_embed": {},
}


def largest_request_bytes(model: str, limits: ServingLimits) -> int:
    """Raw tensor bytes of the largest request `model` accepts under `limits`."""
    node = {s.name: s for s in [*graph.SERVED_STEPS, *graph.ENSEMBLES]}[model]
    rows = limits.max_clip_rows if model == "clip_embed" else 1
    total = 0
    for tensor in node.inputs:
        dims = [getattr(limits, VARIABLE_LENGTHS[model][tensor.name]) if d == -1 else d for d in tensor.shape(limits)]
        item = MAX_TEXT_BYTES + 4 if tensor.dtype in ("BYTES", "STRING") else ITEM_SIZE[tensor.dtype]
        total += rows * math.prod(dims) * item
    return total


def test_the_largest_valid_requests_fit_well_under_the_default_limit():
    limits = ServingLimits(num_items=10**6, num_categories=64, num_campaigns=10**4,
                           category_names=tuple(f"c{i}" for i in range(64)))
    sizes = {model: largest_request_bytes(model, limits) for model in ("recommend", "score_ads", "clip_embed")}
    assert all(0 < size < DEFAULT_MAX_REQUEST_BYTES / 4 for size in sizes.values()), sizes


def _int64_request(n: int) -> list:
    data = np.ones((1, n), np.int64)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "INT64")
    tensor.set_data_from_numpy(data)
    return [tensor]


@needs_nginx
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_an_oversized_request_is_refused_before_it_reaches_the_server(add_one_repo):  # noqa: F811
    limit = 64 * 1024
    with make_server(add_one_repo, proxy=ProxySettings(max_request_bytes=limit), log_file=None) as server:
        client = server.client()
        assert infer_add_one(client, 1) == 2  # through nginx
        with pytest.raises(Exception) as refused:
            client.infer("add_one", _int64_request(limit // 8 + 1), client_timeout=10)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "larger than the server limit of 65536 bytes" in refused.value.message()
        assert infer_add_one(client, 5) == 6  # the connection and the server keep serving
        stats = client.get_inference_statistics("add_one", as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["success"]["count"]) == 2, "the oversized one never reached it"
        client.close()

        http = f"http://{server.http_url}/v2/models/add_one/infer"
        body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]})
        answer = json.loads(urllib.request.urlopen(http, body.encode(), timeout=10).read())
        assert answer["outputs"][0]["data"] == [2, 3, 4]
        with pytest.raises(urllib.error.HTTPError) as too_large:
            urllib.request.urlopen(http, b"x" * (limit + 1), timeout=10)
        assert too_large.value.code == 413
        assert "limit of 65536 bytes" in too_large.value.read().decode()


@needs_nginx
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_tls_behind_the_proxy_covers_grpc_and_http(add_one_repo, self_signed_cert):  # noqa: F811
    cert, key = self_signed_cert
    with make_server(add_one_repo, proxy=ProxySettings(), tls=Tls(cert, key)) as server:
        client = server.client()
        assert infer_add_one(client, 6) == 7
        client.close()
        context = ssl.create_default_context(cafile=str(cert))
        ready = urllib.request.urlopen(f"https://{server.http_url}/v2/health/ready", context=context, timeout=10)
        assert ready.status == 200
        with pytest.raises(urllib.error.URLError):  # plaintext HTTP on the TLS port is refused
            urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5)


def _loopback_connections_to(port: int) -> set[int]:
    """Local ports of this machine's TCP sockets (any state, TIME_WAIT included) whose remote end is `port`."""
    local_ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                local, remote = row.split()[1:3]
                if int(remote.rsplit(":", 1)[1], 16) == port:
                    local_ports.add(int(local.rsplit(":", 1)[1], 16))
    return local_ports


@needs_nginx
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_the_proxy_keeps_its_upstream_connections_alive(add_one_repo):  # noqa: F811
    with make_server(add_one_repo, proxy=ProxySettings(), log_file=None) as server:
        client = server.client()
        assert infer_add_one(client, 1) == 2
        before = _loopback_connections_to(server.upstream_grpc_port)
        for i in range(40):
            assert infer_add_one(client, i) == i + 1
        opened = _loopback_connections_to(server.upstream_grpc_port) - before
        client.close()
        # One connection per request (what nginx does without an upstream keepalive pool) would be 40.
        assert len(opened) <= 3, f"nginx opened {len(opened)} upstream connections for 40 requests"


SLOW = """\
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.5 * len(requests))
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + 1)]) for r in requests]
"""


@needs_nginx
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_requests_beyond_the_inflight_bound_are_refused_at_once(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "slow", SLOW)
    with make_server(repo, proxy=ProxySettings(max_inflight=2), log_file=None) as server:
        outcomes: list[tuple[str, float, str]] = []
        start = threading.Barrier(6)

        def call(value: int) -> None:
            client = grpcclient.InferenceServerClient(server.grpc_url)  # a connection each, a stream each
            data = np.array([[value]], dtype=np.int64)
            tensor = grpcclient.InferInput("INPUT0", list(data.shape), "INT64")
            tensor.set_data_from_numpy(data)
            start.wait()
            began = time.perf_counter()
            try:
                client.infer("slow", [tensor], client_timeout=30)
                outcomes.append(("ok", time.perf_counter() - began, ""))
            except Exception as refused:  # noqa: BLE001 - the status is what the test reads
                outcomes.append((refused.status(), time.perf_counter() - began, refused.message()))
            client.close()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # Six at once, one instance taking 0.5 s each: two are let through, the others refused without waiting
        # (every refusal is back before the first admitted answer).
        assert sorted(o[0] for o in outcomes) == ["StatusCode.UNAVAILABLE"] * 4 + ["ok"] * 2, outcomes
        refused = [(seconds, message) for status, seconds, message in outcomes if status != "ok"]
        assert all("limit of 2 requests in flight" in message for _, message in refused), refused
        assert max(s for s, _ in refused) < min(s for status, s, _ in outcomes if status == "ok"), outcomes
        stats = server.client().get_inference_statistics("slow", as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["success"]["count"]) == 2, "a refused request reached the server"

        http = f"http://{server.http_url}/v2/models/slow/infer"  # HTTP: the same bound, 503 with the limit named
        body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}).encode()
        answers: list[int] = []
        start = threading.Barrier(5)

        def post() -> None:
            start.wait()
            try:
                answers.append(urllib.request.urlopen(http, body, timeout=30).status)
            except urllib.error.HTTPError as refused:
                assert "limit of 2 requests in flight" in refused.read().decode()
                answers.append(refused.code)

        threads = [threading.Thread(target=post) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(answers) == [200, 200, 503, 503, 503], answers
