"""The OpenAI-compatible chat client (the `openai` SDK) against a real local HTTP server speaking the protocol.

The server answers from a script of (status, body, delay_s); error answers carry `retry-after-ms: 10`, which the
SDK honours, so retries after a 5xx take milliseconds (a timeout has no answer to carry it: the SDK's own backoff,
0.5 s with jitter, applies there).
"""

from __future__ import annotations

import json
import time

import pytest

from models.ads.llm_client import ChatClient, LLMError, parse_weights
from tests.models.ads.chat_endpoint import ChatEndpoint

NAMES = ("a", "b", "c")


class _Server(ChatEndpoint):
    """Answers POST /v1/chat/completions from a queue of (status, body, delay_s); records requests."""

    def __init__(self):
        self.script: list[tuple[int, bytes, float]] = []
        self.requests: list[dict] = []

        def answer(request):
            headers = request["headers"]
            self.requests.append({"path": request["path"], "body": request["body"],
                                  "auth": headers.get("Authorization"), "retry": headers.get("x-stainless-retry-count")})
            status, payload, delay = self.script.pop(0) if self.script else (500, b"{}", 0.0)
            time.sleep(delay)
            return status, {"retry-after-ms": "10"} if status >= 400 else {}, payload

        super().__init__(answer)


def _completion(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


MSGS = [{"role": "user", "content": "weights please"}]


def test_success_sends_protocol_and_key(server, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    server.script.append((200, _completion('{"weights": {"a": 1, "b": -0.5, "c": 0}}'), 0.0))
    client = ChatClient(server.url, "m1", api_key_env="TEST_LLM_KEY")
    content = client.chat(MSGS)
    assert parse_weights(content, NAMES) == [1.0, -0.5, 0.0]
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "m1" and req["body"]["messages"] == MSGS
    assert req["auth"] == "Bearer sk-test"


def test_no_key_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv("TEST_LLM_KEY", raising=False)
    server.script.append((200, _completion("{}"), 0.0))
    assert ChatClient(server.url, "m", api_key_env="TEST_LLM_KEY").chat(MSGS) == "{}"
    assert server.requests[0]["auth"] is None


def test_sdk_client_is_configured():
    client = ChatClient("http://127.0.0.1:1/v1", "m", timeout_s=7.5, max_retries=4).client
    assert client.max_retries == 4 and client.timeout == 7.5
    assert str(client.base_url).rstrip("/") == "http://127.0.0.1:1/v1"


def test_base_url_with_v1(server):
    server.script.append((200, _completion("{}"), 0.0))
    ChatClient(server.url + "/v1/", "m").chat(MSGS)
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_retry_after_500(server):
    server.script += [(500, b"oops", 0.0), (503, b"busy", 0.0), (200, _completion('{"weights": [1, 2, 3]}'), 0.0)]
    client = ChatClient(server.url, "m", max_retries=3)
    assert parse_weights(client.chat(MSGS), NAMES) == [1.0, 2.0, 3.0]
    assert len(server.requests) == 3
    assert [r["retry"] for r in server.requests] == ["0", "1", "2"]  # the SDK's retries, one connection each


def test_429_is_retried(server):
    server.script += [(429, b"slow down", 0.0), (200, _completion("{}"), 0.0)]
    assert ChatClient(server.url, "m", max_retries=1).chat(MSGS) == "{}"
    assert len(server.requests) == 2


def test_gives_up_after_retries(server):
    server.script += [(500, b"x", 0.0)] * 5
    with pytest.raises(LLMError, match="giving up after 3 attempts"):
        ChatClient(server.url, "m", max_retries=2).chat(MSGS)
    assert len(server.requests) == 3


def test_4xx_is_not_retried(server):
    server.script.append((400, b'{"error": "bad model"}', 0.0))
    with pytest.raises(LLMError, match="HTTP 400"):
        ChatClient(server.url, "m", max_retries=3).chat(MSGS)
    assert len(server.requests) == 1


def test_malformed_body_is_a_clear_error(server):
    server.script.append((200, b"this is not json", 0.0))
    with pytest.raises(LLMError, match="not a chat completion"):
        ChatClient(server.url, "m").chat(MSGS)


def test_timeout_then_retry(server):
    server.script += [(200, _completion("{}"), 1.0), (200, _completion('{"weights": [0, 0, 1]}'), 0.0)]
    client = ChatClient(server.url, "m", timeout_s=0.2, max_retries=1)
    assert parse_weights(client.chat(MSGS), NAMES) == [0.0, 0.0, 1.0]
    assert len(server.requests) == 2


def test_timeout_exhausted(server):
    server.script += [(200, _completion("{}"), 1.0)] * 2
    t0 = time.perf_counter()
    with pytest.raises(LLMError, match="giving up after 2 attempts.*timed out after 0.2s"):
        ChatClient(server.url, "m", timeout_s=0.2, max_retries=1).chat(MSGS)
    assert len(server.requests) == 2
    assert time.perf_counter() - t0 < 5.0  # two 0.2 s attempts and one backoff, not the server's 1 s delays


def test_unreachable():
    with pytest.raises(LLMError, match="unreachable"):
        ChatClient("http://127.0.0.1:9", "m", timeout_s=0.5, max_retries=0).chat(MSGS)


@pytest.mark.parametrize("content,match", [
    ("no json here", "no JSON object"),
    ('{"weights": {"a": 1, "b": 2', "no JSON object"),
    ('{"weights": {"a": 1, "b": 2,}}', "malformed JSON"),
    ('{"weights": {"a": 1, "b": 2}}', "missing features"),
    ('{"weights": {"a": 1, "b": 2, "c": 3, "d": 4}}', "unknown features"),
    ('{"weights": [1, 2]}', "expected 3 values"),
    ('{"weights": {"a": 1, "b": "x", "c": 3}}', "not a finite number"),
    ('{"weights": {"a": 1, "b": NaN, "c": 3}}', "not a finite number"),
    ('{"weights": {"a": 1, "b": 99, "c": 3}}', "exceeds the bound"),
    ('{"w": [1, 2, 3]}', 'no "weights"'),
])
def test_parse_weights_validation(content, match):
    with pytest.raises(LLMError, match=match):
        parse_weights(content, NAMES)


def test_parse_weights_in_fence():
    assert parse_weights('Sure!\n```json\n{"weights": {"c": 3, "a": 1, "b": 2}}\n```', NAMES) == [1.0, 2.0, 3.0]


def test_bad_client_arguments():
    with pytest.raises(ValueError, match="base_url"):
        ChatClient("localhost:8000", "m")
    with pytest.raises(ValueError, match="timeout_s"):
        ChatClient("http://x", "m", timeout_s=0)
