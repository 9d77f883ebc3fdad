"""The OpenAI-compatible chat client (the `openai` SDK) and the validation of LLM-written CTR weights.

POST {base_url}/v1/chat/completions with {"model", "messages", "temperature"} through `openai.OpenAI`, with
its retries and timeouts configured: `max_retries` retries (the SDK's exponential backoff with jitter, 0.5 s
doubling up to 8 s, or the server's Retry-After / retry-after-ms when it sends one) of 5xx answers, 429, 408,
409, connection errors and timeouts; other 4xx answers are not retried (they will not get better). `timeout_s`
bounds each attempt (connect, read, write). The API key (if any) is read from the environment (OPENAI_API_KEY
by default) and sent as a Bearer token; without one the request goes out with no key (a local endpoint).
Every failure surfaces as LLMError, which models.ads.llm_hyper catches to keep the retrieval-weighted weights;
without an endpoint no client is built at all (the offline path).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import openai


_NO_KEY = "no-key"


class LLMError(RuntimeError):
    """The endpoint could not be reached, or kept failing, or answered something unusable."""


@dataclasses.dataclass
class ChatClient:
    base_url: str  # e.g. http://localhost:8080 (with or without a trailing /v1)
    model: str
    timeout_s: float = 30.0
    max_retries: int = 3
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        self._client: openai.OpenAI | None = None

    @property
    def api_base(self) -> str:
        """The SDK's base_url: ours with /v1 appended unless it is already there."""
        base = self.base_url.rstrip("/")
        return base if base.endswith("/v1") else base + "/v1"

    @property
    def url(self) -> str:
        return self.api_base + "/chat/completions"

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            # The SDK refuses a missing key: without one it gets a placeholder, and chat() leaves the Authorization
            # header out (an endpoint without auth sees no key, as before).
            self._client = openai.OpenAI(base_url=self.api_base, api_key=self._key() or _NO_KEY,
                                         timeout=self.timeout_s, max_retries=self.max_retries)
        return self._client

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def chat(self, messages: list[dict]) -> str:
        """The assistant message's content of the first choice."""
        attempts = self.max_retries + 1
        extra_headers = None if self._key() else {"Authorization": openai.Omit()}
        try:
            # The raw body, validated by _content below (the SDK's own parsing is lenient about missing fields).
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=self.temperature, extra_headers=extra_headers)
        except openai.APIStatusError as e:
            code = e.status_code
            if code >= 500 or code in (408, 409, 429):  # retried by the SDK
                raise LLMError(f"giving up after {attempts} attempts: {self.url} answered HTTP {code}") from e
            raise LLMError(f"{self.url} answered HTTP {code}: {e.response.content[:300]!r}") from e
        except openai.APITimeoutError as e:
            raise LLMError(f"giving up after {attempts} attempts: {self.url} timed out after {self.timeout_s}s") from e
        except openai.APIConnectionError as e:
            raise LLMError(f"giving up after {attempts} attempts: {self.url} unreachable: {e}") from e
        except openai.OpenAIError as e:
            raise LLMError(f"{self.url}: {e}") from e
        return _content(raw.http_response.content, self.url)


def _content(raw: bytes, url: str) -> str:
    try:
        doc = json.loads(raw)
        content = doc["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise LLMError(f"{url} answered a body that is not a chat completion: {raw[:300]!r}") from e
    if not isinstance(content, str):
        raise LLMError(f"{url}: choices[0].message.content is not a string")
    return content


def parse_weights(content: str, feature_names: tuple[str, ...] | list[str], bound: float = 10.0) -> list[float]:
    """The LLM's answer -> weights in `feature_names` order.

    Accepts a JSON object {"weights": {name: value}} or {"weights": [values]} (optionally inside a ```json
    fence or surrounded by prose). Raises LLMError when the JSON is malformed, a name is missing or unknown,
    the length is wrong, or a value is not finite or exceeds |bound|.
    """
    m = re.search(r"\{.*\}", content, re.S)
    if not m:
        raise LLMError(f"no JSON object in the answer: {content[:200]!r}")
    try:
        doc = json.loads(m.group(0))
    except ValueError as e:
        raise LLMError(f"malformed JSON in the answer: {e}") from e
    w = doc.get("weights") if isinstance(doc, dict) else None
    names = list(feature_names)
    if isinstance(w, dict):
        missing, unknown = sorted(set(names) - set(w)), sorted(set(w) - set(names))
        if missing or unknown:
            raise LLMError(f"weights: missing features {missing}, unknown features {unknown}")
        values = [w[n] for n in names]
    elif isinstance(w, list):
        if len(w) != len(names):
            raise LLMError(f"weights: expected {len(names)} values, got {len(w)}")
        values = w
    else:
        raise LLMError('the answer has no "weights" object or list')
    out = []
    for n, v in zip(names, values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LLMError(f"weights[{n}] is not a finite number: {v!r}")
        if abs(v) > bound:
            raise LLMError(f"weights[{n}] = {v} exceeds the bound |w| <= {bound}")
        out.append(float(v))
    return out
