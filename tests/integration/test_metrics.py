"""The custom Prometheus metrics (serving.metrics) on the real tritonserver's metrics endpoint: a few recommend and
score_ads requests and one invalid request of each move the counters by exactly what was served, with the right
labels, next to Triton's own nv_* metrics.

The server runs without the liveness probe (its requests would move the counters too). The steps send their
counts every serving.metrics.FLUSH_INTERVAL_S, so the test waits that long before its last scrape."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest

from clients import RecommendClient, RecommendError
from clients.ads_client import AdsClient
from clients.recommend_client import build_inputs_from_arrays
from serving import graph, metrics
from serving.ads.scorer import SOURCES as AD_SOURCES
from serving.contract import BUILD_MANIFEST, ServingLimits
from serving.steps import GraceRetrieve
from tests.conftest import run_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format -> {(name, labels): value} (comments skipped)."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return samples


def scrape(server) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return parse(response.read().decode())


class Delta:
    """How much each series moved between two scrapes (a series absent before counts from 0)."""

    def __init__(self, before, after):
        self.before, self.after = before, after

    def __call__(self, name: str, **labels) -> float:
        key = (name, frozenset((k, str(v)) for k, v in labels.items()))
        assert key in self.after, f"no series {name}{labels} on the metrics endpoint"
        return self.after[key] - self.before.get(key, 0.0)

    def series(self, name: str) -> dict[frozenset, float]:
        return {labels: value - self.before.get((n, labels), 0.0) for (n, labels), value in self.after.items()
                if n == name}


@pytest.fixture(scope="module")
def limits(model_repository) -> ServingLimits:
    return ServingLimits.from_dict(json.loads((model_repository / BUILD_MANIFEST).read_text())["limits"])


@pytest.fixture(scope="module")
def server(model_repository):
    with run_server(model_repository, liveness_interval_s=0) as server:
        yield server


HISTORIES = [([0, 1, 1, 2], [1, 1, 2, 1]), ([3, 4], [1, 4]), ([5, 6, 7, 8, 9], [1, 1, 1, 2, 1])]
K = 5


def _history(limits: ServingLimits, picks, behaviors):
    """Dataset item ids from the published examples, timestamps a minute apart."""
    items = [limits.example_item_ids[i % len(limits.example_item_ids)] for i in picks]
    return items, behaviors, [1_700_000_000 + 60 * i for i in range(len(items))]


def _decoder_steps(model_repository, limits, histories) -> int:
    """The decoder-step calls the same requests take in process (the same step classes, ONNX Runtime)."""
    grace = GraceRetrieve.create(model_repository / graph.GRACE_RETRIEVE.name / "1", limits)
    for items, behaviors, timestamps in histories:
        grace(item_ids=np.asarray(items, np.int64), behaviors=np.asarray(behaviors, np.int32),
              timestamps=np.asarray(timestamps, np.int64), k=np.asarray([K], np.int32))
    return grace.metrics.counter(metrics.GRACE_BEAM_STEPS).total


def test_custom_metrics_count_what_was_served(server, model_repository, limits):
    histories = [_history(limits, *h) for h in HISTORIES]
    before = scrape(server)

    sources = Counter()
    with RecommendClient(server.grpc_url, timeout_s=60) as client:
        for items, behaviors, timestamps in histories:
            rec = client.infer(build_inputs_from_arrays(items, behaviors, timestamps, K))
            assert len(rec.items) == K
            sources.update(item.source for item in rec.items)
        with pytest.raises(RecommendError) as err:  # k=0: both retrieval steps refuse it
            client.infer(build_inputs_from_arrays(*histories[0], 0))
        assert err.value.code == "StatusCode.INVALID_ARGUMENT", err.value

    model_sources = Counter()
    ads_requests = 0
    if limits.num_campaigns > 0:
        with AdsClient(server.grpc_url, timeout_s=60) as ads:
            campaigns = np.arange(min(limits.num_campaigns, limits.max_campaigns))  # warm and cold-start ones
            for items, behaviors, timestamps in histories[:2]:
                model_sources.update(s.model_source for s in ads.score_ads(items, behaviors, timestamps, campaigns))
                ads_requests += 1
            with pytest.raises(RecommendError) as err:
                ads.score_ads(*histories[0], [limits.num_campaigns + 10**6])  # an unknown campaign
            assert err.value.code == "StatusCode.INVALID_ARGUMENT" and "campaign_ids" in err.value.message

    time.sleep(metrics.FLUSH_INTERVAL_S + 1.5)  # the steps send their counts every FLUSH_INTERVAL_S
    delta = Delta(before, scrape(server))
    n = len(histories)

    # recommend: the served items by source, every source's series present
    assert sum(sources.values()) == n * K
    for source in graph.SOURCE_NAMES:
        assert delta("recserve_recommend_items_total", source=source) == sources[source], source

    # score_ads: predictions by model source (warm vs cold start)
    if ads_requests:
        for source in AD_SOURCES:
            assert delta("recserve_score_ads_predictions_total", model_source=source) == model_sources[source], source
        assert sum(model_sources.values()) == ads_requests * len(campaigns)

    # rejections: exactly the two invalid requests, by step and field
    rejected = {dict(labels)["model"] + "/" + dict(labels)["field"]: value
                for labels, value in delta.series("recserve_rejected_requests_total").items() if value}
    expected = {"grace_retrieve/k": 1.0, "side_retrieve/k": 1.0, **({"score_ads/campaign_ids": 1.0} if ads_requests else {})}
    assert rejected == expected
    assert delta("recserve_rejected_requests_total", model="rank", field="k") == 0  # present, unmoved

    # batch sizes: one observation per execution (= Triton's exec count), summing to the requests each step got
    for step, requests in ((graph.GRACE_RETRIEVE.name, n + 1), (graph.SIDE_RETRIEVE.name, n + 1), (graph.RANK.name, n),
                           *(((graph.SCORE_ADS.name, ads_requests + 1),) if ads_requests else ())):
        executions = delta("nv_inference_exec_count", model=step, version="1")
        assert delta("recserve_batch_size_count", model=step) == executions > 0, step
        assert delta("recserve_batch_size_sum", model=step) == requests, step
        assert delta("recserve_batch_size_bucket", model=step, le="+Inf") == executions, step
    # Triton saw every request grace_retrieve got, but it cannot tell a refusal from an answer: a python step's error
    # response counts as nv_inference_request_success (Triton 2.51), hence recserve_rejected_requests_total.
    failures = sum(value for labels, value in delta.series("nv_inference_request_failure").items()
                   if ("model", graph.GRACE_RETRIEVE.name) in labels)  # one series per reason
    assert delta("nv_inference_request_success", model=graph.GRACE_RETRIEVE.name, version="1") + failures == n + 1
    assert not any(delta.series("recserve_internal_errors_total").values())

    # GRACE: as many decoder-step calls as the same requests take in process
    assert delta("recserve_grace_beam_steps_total") == _decoder_steps(model_repository, limits, histories) > 0
