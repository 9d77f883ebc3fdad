"""LLM-HYPER through the `openai` SDK client when the endpoint keeps failing: every cold campaign keeps the
offline (retrieval-weighted) weights, exactly as without an endpoint, and the artifact records why."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from models.ads import llm_hyper as lh
from models.ads.llm_client import ChatClient
from models.ads.logs import split_ad_logs


@pytest.fixture(scope="module")
def prep(ads_data):
    logs = split_ad_logs(ads_data.campaigns, holdout_cold=0.3, seed=5)
    return lh.prepare(ads_data, logs, reference_pool=2000)


@pytest.fixture(scope="module")
def emb(ads_data):
    return lh.creative_embeddings(ads_data, "attributes")[0]


class _Failing:
    """Answers every chat completion with HTTP 500 (retry-after-ms: 1, so the SDK's retries are quick)."""

    def __init__(self):
        self.calls = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls += 1
                self.send_response(500)
                self.send_header("retry-after-ms", "1")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_failing_endpoint_falls_back_to_the_offline_path(prep, emb):
    offline = lh.generate_cold(prep, emb, k=3, temperature=0.1)
    server = _Failing()
    try:
        m = lh.generate_cold(prep, emb, k=3, temperature=0.1, client=ChatClient(server.url, "m", max_retries=1))
    finally:
        server.close()
    cold = prep.campaigns.cold_ids
    assert len(cold) > 0 and server.calls == 2 * len(cold)  # one retry per campaign
    assert set(m.llm_failures) == {int(c) for c in cold}
    assert all("giving up after 2 attempts" in e and "HTTP 500" in e for e in m.llm_failures.values())
    assert (m.source[cold] == lh.HYPER).all()
    np.testing.assert_array_equal(m.source, offline.source)
    np.testing.assert_allclose(m.weights, offline.weights)
    np.testing.assert_allclose(m.bias, offline.bias)
