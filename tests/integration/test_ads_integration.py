"""`score_ads` and `clip_embed` through the real tritonserver over gRPC, checked against the in-process
reference (the numpy CTR scorer and the torch CLIP model)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from clients import RecommendError
from clients.ads_client import AdsClient
from serving.contract import RequestError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ads(triton_server):
    with AdsClient(triton_server.grpc_url, timeout_s=60) as c:
        yield c


def _history(rng, num_items: int, n: int):
    items = rng.integers(1, num_items + 1, size=n)
    behaviors = rng.choice([1, 1, 1, 2, 3, 4], size=n)
    timestamps = 1_700_000_000 + np.cumsum(rng.integers(0, 600, size=n))
    return items, behaviors, timestamps


def test_score_ads_matches_reference_for_warm_and_cold_campaigns(ads, reference):
    rng = np.random.default_rng(0)
    num_campaigns = reference.limits.num_campaigns
    sources = set()
    for _ in range(8):
        items, behs, ts = _history(rng, reference.limits.num_items, int(rng.integers(1, 30)))
        campaigns = rng.choice(num_campaigns, size=min(100, num_campaigns), replace=False)
        served = ads.score_ads(items, behs, ts, campaigns)
        expected = reference.score_ads(items, behs, ts, campaigns)
        assert [s.campaign_id for s in served] == campaigns.tolist()
        np.testing.assert_allclose([s.pctr for s in served], expected, atol=1e-6, rtol=0)
        assert all(0.0 <= s.pctr <= 1.0 for s in served)
        sources |= {s.model_source for s in served}
    assert {"warm", "hyper"} <= sources  # cold-start campaigns are scored by generated weights


def test_score_ads_concurrent_requests_are_independent(ads, reference):
    rng = np.random.default_rng(1)
    requests = [(*_history(rng, reference.limits.num_items, 10), rng.choice(reference.limits.num_campaigns, 20))
                for _ in range(16)]
    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(lambda r: ads.score_ads(*r), requests))
    for r, s in zip(requests, served):
        np.testing.assert_allclose([x.pctr for x in s], reference.score_ads(*r), atol=1e-6, rtol=0)


@pytest.mark.parametrize("campaigns, field", [
    ([0, 10**6], "campaign_ids"),  # unknown campaign
    ([-1], "campaign_ids"),
    ([], "campaign_ids"),
    (list(range(300)), "campaign_ids"),  # over max_campaigns
])
def test_score_ads_bad_campaigns_are_invalid_argument(ads, reference, campaigns, field):
    campaigns = [c % reference.limits.num_campaigns if len(campaigns) == 300 else c for c in campaigns]
    with pytest.raises(RecommendError) as err:
        ads.score_ads([1, 2], [1, 1], [10, 20], campaigns)
    assert "INVALID_ARGUMENT" in err.value.code and field in err.value.message
    with pytest.raises(RequestError):
        reference.score_ads([1, 2], [1, 1], [10, 20], campaigns)
    # The server keeps serving.
    assert len(ads.score_ads([1, 2], [1, 1], [10, 20], [0, 1])) == 2


def test_score_ads_bad_history_is_invalid_argument(ads):
    with pytest.raises(RecommendError) as err:
        ads.score_ads([1, 2], [1, 9], [10, 20], [0])
    assert "INVALID_ARGUMENT" in err.value.code and "behaviors" in err.value.message
    with pytest.raises(RecommendError) as err:
        ads.score_ads([], [], [], [0])
    assert "INVALID_ARGUMENT" in err.value.code and "item_ids" in err.value.message


def test_clip_embed_matches_torch_reference(ads, reference, model_repository):
    from data.fashion_mnist import load

    images, _ = load("test")
    texts = ["a photo of a sneaker", "brand003 classic tops t-shirt pack", "ankle boot"]
    got_images = ads.embed(images=images[:5])
    got_texts = ads.embed(texts=texts)
    got_both = ads.embed(images=images[:3], texts=texts)
    np.testing.assert_allclose(got_images, reference.clip_embed(images=images[:5]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_texts, reference.clip_embed(texts=texts), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_both, reference.clip_embed(images=images[:3], texts=texts), atol=1e-4, rtol=0)
    for e in (got_images, got_texts, got_both):
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_clip_embed_bad_input_is_invalid_argument(ads, reference):
    images = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(RecommendError) as err:  # Triton itself checks that the rows line up
        ads.embed(images=images, texts=["only one text"])
    assert "INVALID_ARGUMENT" in err.value.code and "'image' batch size" in err.value.message
    with pytest.raises(RecommendError) as err:
        ads.embed(texts=["x"] * (reference.limits.max_clip_rows + 1))
    assert "INVALID_ARGUMENT" in err.value.code and "batch" in err.value.message
    with pytest.raises(RecommendError) as err:
        ads.embed(texts=["x" * 5000])
    assert "INVALID_ARGUMENT" in err.value.code and "text" in err.value.message
    assert ads.embed(texts=["still serving"]).shape[0] == 1


def test_clip_embed_refuses_what_it_would_rewrite(ads, model_repository):
    """A text past the text tower's context would be cut silently, invalid UTF-8 replaced: both are refused."""
    import json

    from serving.clip.embedder import MANIFEST_FILE

    context = json.loads((model_repository / "clip_embed" / "1" / MANIFEST_FILE).read_text())["context_length"]
    long_text = " ".join(["sneaker"] * context)  # fits the byte limit, not the context (+ start and end tokens)
    with pytest.raises(RecommendError) as err:
        ads.embed(texts=[long_text])
    assert "INVALID_ARGUMENT" in err.value.code and f"the maximum is {context}" in err.value.message
    assert "tokens" in err.value.message
    with pytest.raises(RecommendError) as err:
        ads.embed(texts=[b"caf\xe9 latte"])
    assert "INVALID_ARGUMENT" in err.value.code and "UTF-8" in err.value.message
    words = " ".join(["sneaker"] * (context - 2))  # exactly the context: accepted
    assert ads.embed(texts=[words]).shape[0] == 1


def test_score_ads_refuses_timestamps_out_of_range(ads):
    for ts in ([-1, 10], [10, 2**62]):
        with pytest.raises(RecommendError) as err:
            ads.score_ads([1, 2], [1, 1], ts, [0])
        assert "INVALID_ARGUMENT" in err.value.code and "timestamps" in err.value.message
        assert "0..4102444800" in err.value.message
