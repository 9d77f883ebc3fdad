"""nginx in front of tritonserver: a request-size limit enforced before a byte reaches the server or a python stub,
a bound on the requests in flight, connection and header timeouts, and TLS for gRPC and HTTP alike (tritonserver's
own HTTP has no TLS).

tritonserver has no setting for the largest request it accepts: it reads a 100 MB `item_ids` whole before a
step rejects it, and the python stubs' shared memory grows to fit and never shrinks. nginx (Debian's
nginx-light: http2 and grpc_pass) refuses a body over the limit while reading it, answering gRPC clients with
status INVALID_ARGUMENT and a message naming the limit, and HTTP clients with 413.

The bound on requests in flight is where overload is shed: a request beyond it is refused at once (gRPC
UNAVAILABLE, HTTP 503, the message naming the limit) instead of queueing. The steps' own queues are not bounded
in tritonserver (serving/configs.py says why), so this bound, counted per port (each HTTP/2 stream is a request),
is also the most any step's queue can hold for requests that come through the proxy.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Far above the largest valid request (a clip_embed of 64 images and 64 texts; tests/serving/test_proxy.py).
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
NGINX = "nginx"
SYSTEM_NGINX = "/usr/sbin/nginx"  # Debian's, outside PATH for non-root users
# Idle connections to tritonserver each nginx worker keeps open (per upstream): above the concurrency a pod
# serves, so a burst does not open and close connections.
UPSTREAM_KEEPALIVE = 64
# Requests in flight per port: under a second of queued work at a 2-core pod's measured peak (a few hundred
# recommend/s: docs/results/perf_sweep.md).
DEFAULT_MAX_INFLIGHT = 256


class ProxyError(RuntimeError):
    """nginx is missing or could not start."""


@dataclass(frozen=True)
class ProxySettings:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    header_timeout_s: int = 10  # a client has this long to send its request headers
    body_timeout_s: int = 10  # ... and at most this long between two reads of its body
    idle_timeout_s: int = 75  # an idle keep-alive connection is closed after this
    upstream_timeout_s: int = 60  # the longest a request may wait for tritonserver's answer
    max_inflight: int = DEFAULT_MAX_INFLIGHT  # requests in flight per port; more are refused (UNAVAILABLE / 503)


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n % 2**20 == 0 else f"{n} bytes"


def _grpc_error(http_status: int, name: str, grpc_status: int, message: str) -> str:
    """nginx lines answering gRPC clients with `grpc_status` and `message` where nginx would send `http_status`."""
    return f"""    error_page {http_status} = @{name};
    location @{name} {{
      default_type application/grpc;
      add_header grpc-status {grpc_status} always;
      add_header grpc-message "{message}" always;
      return 200;
    }}
"""


def render_config(
    *,
    workdir: Path,
    host: str,
    grpc_port: int,
    http_port: int,
    upstream_grpc_port: int,
    upstream_http_port: int,
    settings: ProxySettings,
    tls=None,
) -> str:
    """nginx.conf: gRPC on grpc_port -> tritonserver's loopback gRPC, HTTP on http_port -> its loopback HTTP."""
    listen_host = f"[{host}]" if ":" in host else (host or "0.0.0.0")
    limit = settings.max_request_bytes
    message = f"request body is larger than the server limit of {_mib(limit)}"
    busy = f"the server is at its limit of {settings.max_inflight} requests in flight; retry later"
    ssl = " ssl" if tls is not None else ""
    tls_lines = ""
    if tls is not None:
        tls_lines = f"    ssl_certificate {tls.cert};\n    ssl_certificate_key {tls.key};\n"
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""  # workers stay this user, not nobody
    temp = "\n".join(f"  {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                            "uwsgi", "scgi"))
    return f"""# rendered by serving.proxy
{user}worker_processes 1;
pid {workdir / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp}
  # Kept-alive connections to tritonserver: without these nginx opens a new upstream TCP (and HTTP/2)
  # connection for every request, ~1 ms at concurrency 1 and a socket in TIME_WAIT per request under load.
  upstream triton_grpc {{
    server 127.0.0.1:{upstream_grpc_port};
    keepalive {UPSTREAM_KEEPALIVE};
  }}
  upstream triton_http {{
    server 127.0.0.1:{upstream_http_port};
    keepalive {UPSTREAM_KEEPALIVE};
  }}
  client_max_body_size {limit};
  client_body_buffer_size {min(limit, 1 << 20)};
  client_header_timeout {settings.header_timeout_s}s;
  client_body_timeout {settings.body_timeout_s}s;
  keepalive_timeout {settings.idle_timeout_s}s;
  # Requests in flight, counted per listening port (under HTTP/2 each stream counts as one).
  limit_conn_zone $server_port zone=inflight:1m;
  limit_conn_status 503;
  limit_conn_log_level warn;
  server {{
    listen {listen_host}:{grpc_port}{ssl} http2;
{tls_lines}    limit_conn inflight {settings.max_inflight};
    location / {{
      grpc_pass grpc://triton_grpc;
      grpc_read_timeout {settings.upstream_timeout_s}s;
      grpc_send_timeout {settings.upstream_timeout_s}s;
    }}
    # gRPC answers, not HTML pages: trailers-only, naming the limit. Too large: status 3 (INVALID_ARGUMENT); over
    # the in-flight bound: status 14 (UNAVAILABLE), which clients retry.
{_grpc_error(413, "too_large", 3, message)}{_grpc_error(503, "busy", 14, busy)}  }}
  server {{
    listen {listen_host}:{http_port}{ssl};
{tls_lines}    limit_conn inflight {settings.max_inflight};
    location / {{
      proxy_pass http://triton_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";  # HTTP/1.1 keep-alive to the upstream (nginx sends "close" otherwise)
      proxy_read_timeout {settings.upstream_timeout_s}s;
    }}
    error_page 413 = @too_large;
    location @too_large {{
      default_type application/json;
      return 413 '{{"error": "{message}"}}';
    }}
    error_page 503 = @busy;
    location @busy {{
      default_type application/json;
      return 503 '{{"error": "{busy}"}}';
    }}
  }}
}}
"""


class NginxProxy:
    """One nginx master process with its private config and temp directory."""

    def __init__(self, config_text_factory, output: IO[bytes] | None = None) -> None:
        self._factory = config_text_factory
        self._output = output
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        found = shutil.which(NGINX) or (SYSTEM_NGINX if os.access(SYSTEM_NGINX, os.X_OK) else None)
        if found is None:
            raise ProxyError("nginx is not installed; it enforces the request size limit "
                             "(Debian: apt-get install nginx-light), or serve without the limit")
        return found

    def start(self, timeout_s: float = 10.0) -> None:
        binary = self.binary()
        self._workdir = Path(tempfile.mkdtemp(prefix="recserve-nginx-"))
        config = self._workdir / "nginx.conf"
        config.write_text(self._factory(self._workdir))
        checked = subprocess.run([binary, "-t", "-q", "-e", "stderr", "-p", str(self._workdir), "-c", str(config)],
                                 capture_output=True, text=True)
        if checked.returncode != 0:
            raise ProxyError(f"nginx refused its configuration: {checked.stderr.strip()}")
        self._process = subprocess.Popen(
            [binary, "-e", "stderr", "-p", str(self._workdir), "-c", str(config), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT if self._output else None,
            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not (self._workdir / "nginx.pid").exists():
            if self._process.poll() is not None:
                raise ProxyError(f"nginx exited at start with code {self._process.returncode} (see the server log)")
            if time.monotonic() > deadline:
                raise ProxyError("nginx did not start")
            time.sleep(0.05)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()  # fast shutdown: nginx closes its connections
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)  # the master and its workers (a session of their own)
                process.wait()
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, 9)  # workers still exiting after their master: none outlives the stop
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
