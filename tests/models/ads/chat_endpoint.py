"""A local OpenAI-compatible chat endpoint for the LLM-HYPER tests: a real HTTP server on a free loopback port
whose answer to each POST is computed by the test."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class ChatEndpoint:
    """answer(request) -> (HTTP status, extra headers, response body bytes), where request is {"path", "body" (the
    JSON), "headers"}; `calls` counts POSTs. A client that gave up before the answer (a timeout) is ignored."""

    def __init__(self, answer: Callable[[dict], tuple[int, dict, bytes]]):
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                outer.calls += 1
                status, headers, payload = answer({"path": self.path, "body": body, "headers": self.headers})
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def chat_completion(content: str) -> bytes:
    """The body of a chat completion whose one choice says `content`."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
