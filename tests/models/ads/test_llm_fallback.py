"""LLM-HYPER through the `openai` SDK client when the endpoint keeps failing: every cold campaign keeps the
offline (retrieval-weighted) weights, exactly as without an endpoint, and the artifact records why."""

from __future__ import annotations

import numpy as np
import pytest

from models.ads import llm_hyper as lh
from models.ads.llm_client import ChatClient
from models.ads.logs import split_ad_logs
from tests.models.ads.chat_endpoint import ChatEndpoint


@pytest.fixture(scope="module")
def prep(ads_data):
    logs = split_ad_logs(ads_data.campaigns, holdout_cold=0.3, seed=5)
    return lh.prepare(ads_data, logs, reference_pool=2000)


@pytest.fixture(scope="module")
def emb(ads_data):
    return lh.creative_embeddings(ads_data, "attributes")[0]


def _failing() -> ChatEndpoint:
    """Answers every chat completion with HTTP 500 (retry-after-ms: 1, so the SDK's retries are quick)."""
    return ChatEndpoint(lambda request: (500, {"retry-after-ms": "1"}, b"{}"))


def test_failing_endpoint_falls_back_to_the_offline_path(prep, emb):
    offline = lh.generate_cold(prep, emb, k=3, temperature=0.1)
    server = _failing()
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
