"""A minimal OpenAI-compatible chat client (stdlib urllib) and the validation of LLM-written CTR weights.

POST {base_url}/v1/chat/completions with {"model", "messages", "temperature"}; the API key (if any) is read
from the environment (OPENAI_API_KEY by default) and sent as a Bearer token. 5xx answers, 429, connection
errors and timeouts are retried with exponential backoff; 4xx answers are not (they will not get better).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request


class LLMError(RuntimeError):
    """The endpoint could not be reached, or kept failing, or answered something unusable."""


@dataclasses.dataclass
class ChatClient:
    base_url: str  # e.g. http://localhost:8080 (with or without a trailing /v1)
    model: str
    timeout_s: float = 30.0
    max_retries: int = 3
    backoff_s: float = 0.5
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")

    def chat(self, messages: list[dict]) -> str:
        """The assistant message's content of the first choice."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                if e.code >= 500 or e.code == 429:
                    last = LLMError(f"{self.url} answered HTTP {e.code}")
                    continue
                raise LLMError(f"{self.url} answered HTTP {e.code}: {e.read()[:300]!r}") from e
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                last = LLMError(f"{self.url} unreachable or timed out after {self.timeout_s}s: {e}")
                continue
            return _content(raw, self.url)
        raise LLMError(f"giving up after {self.max_retries + 1} attempts: {last}")


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
