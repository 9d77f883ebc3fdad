"""Typed gRPC clients for the ads side of the server: `score_ads` (calibrated pCTR of campaigns for one
user, cold-start campaigns included) and `clip_embed` (CLIP embeddings of new creatives).

Like RecommendClient, these only guarantee the wire format (tensor names, dtypes, shapes); the server checks
limits and answers bad input with INVALID_ARGUMENT (RecommendError with that code). Behaviours may be codes
(sent as given) or event names of the vocabulary `score_ads` publishes ("behaviors"); item ids are the
dataset's own (`AdsLimits.example_item_ids` holds a few valid ones, see recommend_client.synthetic_history).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.recommend_client import (
    DEFAULT_URL,
    Event,
    RecommendError,
    _decode,
    _infer_input,
    _row,
    needs_vocabulary,
    param_int,
    param_item_ids,
    param_names,
    resolve_behaviors,
)

__all__ = ["AdScore", "AdsClient", "AdsLimits", "IMAGE_SIZE", "build_score_ads_inputs", "build_clip_embed_inputs",
           "parse_ads_limits"]

SCORE_ADS_MODEL, CLIP_EMBED_MODEL = "score_ads", "clip_embed"
IMAGE_SIZE = (28, 28)  # grayscale uint8 product images, the default CLIP's input


@dataclass(frozen=True)
class AdScore:
    campaign_id: int
    pctr: float
    model_source: str  # "warm" (trained on the campaign's logs) or "hyper"/"llm" (generated, cold start)


@dataclass(frozen=True)
class AdsLimits:
    """What `score_ads` publishes (its config parameters)."""

    num_items: int
    max_history: int
    num_campaigns: int  # campaign ids are 0..num_campaigns-1
    max_campaigns: int  # campaigns per request
    behaviors: tuple[str, ...]  # event vocabulary: code i + 1 is behaviors[i]
    example_item_ids: tuple[int, ...]  # a few valid item ids (the most interacted), for synthetic traffic

    def behavior_codes(self, behaviors: Iterable[int | str]) -> list[int]:
        return resolve_behaviors(behaviors, self.behaviors)


def parse_ads_limits(parameters: Mapping[str, Any]) -> AdsLimits:
    """Parse the `parameters` map of the `score_ads` model config; RecommendError (CLIENT_ERROR) naming the
    parameter when one is missing or malformed."""
    ints = {name: param_int(parameters, name) for name in ("num_items", "max_history", "num_campaigns",
                                                               "max_campaigns")}
    return AdsLimits(**ints, behaviors=param_names(parameters, "behaviors"),
                     example_item_ids=param_item_ids(parameters, "example_item_ids"))


def build_score_ads_inputs(item_ids: Iterable[int], behaviors: Iterable[int | str], timestamps: Iterable[int],
                           campaign_ids: Iterable[int], limits: AdsLimits | None = None
                           ) -> list[grpcclient.InferInput]:
    """Event names / Behavior members in `behaviors` are resolved with `limits` (refused without); ints are
    sent as given."""
    codes = resolve_behaviors(behaviors, limits.behaviors if limits else None)
    return [_infer_input("item_ids", _row("item_ids", item_ids, np.int64), "INT64"),
            _infer_input("behaviors", _row("behaviors", codes, np.int32), "INT32"),
            _infer_input("timestamps", _row("timestamps", timestamps, np.int64), "INT64"),
            _infer_input("campaign_ids", _row("campaign_ids", campaign_ids, np.int64), "INT64")]


def build_clip_embed_inputs(images: np.ndarray | None = None, texts: Sequence[str | bytes] | None = None
                            ) -> list[grpcclient.InferInput]:
    """images uint8 [n, 28, 28] and/or n texts; one row per creative."""
    inputs = []
    if images is not None:
        inputs.append(_infer_input("image", np.ascontiguousarray(images, np.uint8), "UINT8"))
    if texts is not None:
        data = np.array([[t if isinstance(t, bytes) else t.encode("utf-8")] for t in texts],
                        dtype=object).reshape(len(texts), 1)
        inputs.append(_infer_input("text", data, "BYTES"))
    return inputs


class AdsClient:
    """Blocking client for score_ads and clip_embed. Use as a context manager to close the channel."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url=url)
        self._limits: AdsLimits | None = None

    def __enter__(self) -> AdsClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _infer(self, model: str, inputs: list, outputs: Sequence[str]):
        try:
            return self._client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                                      client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise RecommendError.from_triton(exc) from exc

    def limits(self) -> AdsLimits:
        """score_ads' published limits, vocabulary and example item ids; fetched once, then cached."""
        if self._limits is None:
            try:
                config = self._client.get_model_config(SCORE_ADS_MODEL, as_json=True, client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                raise RecommendError.from_triton(exc) from exc
            self._limits = parse_ads_limits(config.get("config", {}).get("parameters", {}))
        return self._limits

    def score_ads(self, item_ids: Iterable[int], behaviors: Iterable[int | str], timestamps: Iterable[int],
                  campaign_ids: Iterable[int]) -> list[AdScore]:
        """Calibrated pCTR per campaign, in the order asked. Behaviours: codes, or event names of the server's
        vocabulary (then limits() is fetched once)."""
        campaign_ids = [int(c) for c in campaign_ids]
        behaviors = list(behaviors)
        limits = self.limits() if needs_vocabulary(behaviors) else None
        result = self._infer(SCORE_ADS_MODEL,
                             build_score_ads_inputs(item_ids, behaviors, timestamps, campaign_ids, limits),
                             ("pctr", "model_source"))
        pctr, source = result.as_numpy("pctr")[0], result.as_numpy("model_source")[0]
        return [AdScore(c, float(p), _decode(s)) for c, p, s in zip(campaign_ids, pctr, source)]

    def score_events(self, events: Sequence[Event], campaign_ids: Iterable[int]) -> list[AdScore]:
        """score_ads for a history of Events (oldest first), e.g. from recommend_client.synthetic_history."""
        return self.score_ads([e.item_id for e in events], [e.behavior for e in events],
                              [e.timestamp for e in events], campaign_ids)

    def embed(self, images: np.ndarray | None = None, texts: Sequence[str] | None = None) -> np.ndarray:
        """L2-normalised embeddings [n, E]: of the images, of the texts, or of both (one creative per row)."""
        return self._infer(CLIP_EMBED_MODEL, build_clip_embed_inputs(images, texts), ("embedding",)
                           ).as_numpy("embedding")
