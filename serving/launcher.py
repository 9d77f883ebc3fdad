"""Launch the `tritonserver` binary shipped in the nvidia-pytriton wheel on a plain model repository.

PyTriton's Python binding API is deliberately not used: the server runs an ordinary Triton model
repository (config.pbtxt + model.py per model), exactly as a stock Triton container would.

Library use::

    with TritonServer("model_repository", grpc_port=free_port()) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

CLI::

    python -m serving.launcher --model-repository model_repository
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import logging
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving import liveness
from serving.contract import BUILD_MANIFEST, ServingLimits
from serving.proxy import (DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_REQUEST_BYTES, NginxProxy, ProxyError, ProxySettings,
                           render_config)

# Passing this as `log_file` lets the server write straight to the launcher's stdout/stderr.
INHERIT_OUTPUT = "-"

# The stub must match the Python that runs the models; module-level so tests can fake a mismatch.
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"

SHM_DIR = Path("/dev/shm")
# Each server gets its own python-backend shm prefix, so cleanup after a crash removes only its own regions.
SHM_PREFIX = "recserve_"

# APIs that change the server (load/unload models, register shared memory, log levels, tracing) answer only
# requests that carry this header with the server's admin key; inference, health and metadata stay open.
ADMIN_APIS = ("model-repository", "shared-memory", "logging", "trace")
ADMIN_HEADER = "admin-key"  # as an HTTP header; tritonserver expects gRPC metadata to carry it prefixed:
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
ADMIN_KEY_ENV = "RECSERVE_ADMIN_KEY"

STUB_BINARY = "triton_python_backend_stub"
_WATCHDOG_INTERVAL_S = 0.5

log = logging.getLogger("serving.launcher")

# Lines worth quoting from the server log when start-up fails: error-level log lines, model load
# failures and the final "error: creating server" (not the harmless NVML/DCGM noise on CPU hosts).
_LOG_ERROR_LINE = re.compile(r"^E\d{4} |failed to load|UNAVAILABLE|^error: ")
_LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.2
_PROBE_TIMEOUT_S = 2.0
# Keep gRPC from backing off for seconds between probes while the port is still closed.
_PROBE_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 200),
]


class ServerStartError(RuntimeError):
    """tritonserver could not be started or did not become ready."""


@dataclass(frozen=True)
class WheelLayout:
    """Where the nvidia-pytriton wheel keeps the Triton binary and its companions."""

    binary: Path
    backend_dir: Path
    stubs_dir: Path
    libs_dir: Path

    @classmethod
    def from_pytriton(cls) -> WheelLayout:
        try:
            import pytriton
        except ImportError as exc:
            raise ServerStartError("nvidia-pytriton is not installed; it provides tritonserver") from exc
        package_dir = Path(pytriton.__file__).resolve().parent
        triton_dir = package_dir / "tritonserver"
        return cls(
            binary=triton_dir / "bin" / "tritonserver",
            backend_dir=triton_dir / "backends",
            stubs_dir=triton_dir / "python_backend_stubs",
            libs_dir=package_dir.parent / "nvidia_pytriton.libs",
        )

    @classmethod
    def from_install(cls, home: Path) -> WheelLayout:
        """A Triton installation (the NGC container's /opt/tritonserver): its python stub is already in place."""
        home = Path(home)
        return cls(binary=home / "bin" / "tritonserver", backend_dir=home / "backends", stubs_dir=Path(),
                   libs_dir=home / "lib")

    @property
    def stub_source(self) -> Path:
        return self.stubs_dir / PYTHON_VERSION / "triton_python_backend_stub"

    @property
    def stub_target(self) -> Path:
        # The python backend only looks for its stub next to libtriton_python.so.
        return self.backend_dir / "python" / "triton_python_backend_stub"


def free_ports(n: int) -> list[int]:
    """Return `n` distinct loopback ports that were free a moment ago (racy by nature; fine for tests)."""
    sockets = []
    try:
        # Hold all sockets open together so the kernel cannot hand out the same port twice.
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def install_stub(layout: WheelLayout) -> None:
    """Copy the stub for this Python into the backend directory, idempotently and atomically."""
    source, target = layout.stub_source, layout.stub_target
    if layout.stubs_dir == Path() and target.is_file():  # an installation that ships its stub
        return
    if not source.is_file():
        available = sorted(p.name for p in layout.stubs_dir.iterdir()) if layout.stubs_dir.is_dir() else []
        raise ServerStartError(
            f"no Triton python backend stub for Python {PYTHON_VERSION} at {source} "
            f"(available: {', '.join(available) or 'none'})"
        )
    if target.is_file() and _same_bytes(source, target):
        return
    # Copy under a temporary name then rename, so a concurrently starting server never execs a half-written stub.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".stub-")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _shm_regions(prefix: str) -> set[str]:
    return set(glob.glob(str(SHM_DIR / f"{glob.escape(prefix)}*")))


@dataclass(frozen=True)
class Heal:
    """The watchdog reloaded `model` after its stub died, or after it hung and the watchdog killed it (times are
    time.monotonic(); `noticed` is when the death, or the hang, was noticed)."""

    model: str
    noticed: float
    reloaded: float
    cause: str = "stub died"


@dataclass(frozen=True)
class Tls:
    """TLS with the server's PEM certificate and key. Behind the proxy, nginx speaks it on the gRPC and HTTP
    ports; without the proxy, tritonserver speaks it on gRPC only (its HTTP endpoint has no TLS: HTTP is off)."""

    cert: Path
    key: Path


def python_stubs(server_pid: int) -> dict[int, str]:
    """The python-backend stub processes of one tritonserver: pid -> model name (read from /proc)."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
            if ppid != server_pid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if len(argv) > 1 and argv[0].endswith(STUB_BINARY.encode()):
            # argv[1] is <repository>/<model>/<version>/model.py
            stubs[int(entry.name)] = Path(argv[1].decode(errors="replace")).parent.parent.name
    return stubs


def reload_model(client: grpcclient.InferenceServerClient, model: str, headers: Mapping[str, str],
                 timeout_s: float = 300.0) -> None:
    """Load `model` again, new instances and all, even when nothing changed: tritonserver keeps the running
    instances when a load brings the same files and config, so the current config goes in as an override with a
    fresh `reload_generation` parameter (which no step reads). The old instance serves until the new one is
    ready; if the new one fails to load, the old one stays and this raises."""
    config = client.get_model_config(model, as_json=True, client_timeout=timeout_s)["config"]
    config.setdefault("parameters", {})["reload_generation"] = {"string_value": str(time.time_ns())}
    client.load_model(model, config=json.dumps(config), headers=dict(headers), client_timeout=timeout_s)


def load_admin_key(path: Path | None) -> str:
    """The admin key: $RECSERVE_ADMIN_KEY, else the file at `path` (created with a new random key, mode 0600,
    when missing), else a new random key."""
    key = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if key:
        return key
    if path is None:
        return secrets.token_urlsafe(24)
    if path.exists():
        key = path.read_text().strip()
        if not key:
            raise ServerStartError(f"admin key file {path} is empty")
        return key
    key = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def _prepend_path(value: str, existing: str | None) -> str:
    return f"{value}{os.pathsep}{existing}" if existing else value


class TritonServer:
    """A `tritonserver` child process serving one model repository."""

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        host: str = "127.0.0.1",
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        extra_args: Sequence[str] = (),
        log_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        tritonserver_home: str | os.PathLike[str] | None = None,
        admin_key: str | None = None,
        tls: Tls | None = None,
        watchdog: bool = True,
        proxy: ProxySettings | None = None,
        liveness_interval_s: float = 2.0,
        liveness_timeout_s: float = 5.0,
    ) -> None:
        """`log_file`: None logs to a temporary file (its tail is quoted on failure, and it is deleted
        on a clean stop); INHERIT_OUTPUT ("-") shares the launcher's stdout/stderr; any other value
        is a path to append to. `binary` overrides the tritonserver from the wheel.

        `admin_key`: the model-repository, shared-memory, logging and trace APIs answer only requests with
        this key in the `admin-key` header ("" leaves them open to anyone). `tls`: gRPC over TLS (no HTTP).
        `watchdog`: reload a model whose python stub died (explicit model control), within about a second; and
        every `liveness_interval_s` (0: never) send each python step a probe request: a step that answers none
        within `liveness_timeout_s` and completes no other request meanwhile is hung, its stubs are killed and
        the watchdog reloads it (serving.liveness).
        `proxy`: nginx serves the gRPC and HTTP ports (request size limit, timeouts, TLS for both) and
        tritonserver listens on loopback ports of its own."""
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self._binary_override = Path(binary) if binary is not None else None
        self._home = Path(tritonserver_home) if tritonserver_home is not None else None
        self._inherit_output = log_file == INHERIT_OUTPUT
        self._log_path = None if log_file is None or self._inherit_output else Path(log_file)
        self._temp_log_dir: Path | None = None
        self._log_handle: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.admin_key = secrets.token_urlsafe(24) if admin_key is None else admin_key
        self.tls = tls
        self.proxy_settings = proxy
        self._proxy: NginxProxy | None = None
        # Where tritonserver itself listens: the public ports, or loopback ports behind the proxy.
        self._upstream = (host, grpc_port, http_port)
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"
        self._start_failed = False
        self._watchdog_enabled = watchdog
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self.liveness_interval_s = liveness_interval_s
        self.liveness_timeout_s = liveness_timeout_s
        self._liveness: threading.Thread | None = None
        self._hung: dict[str, float] = {}  # model -> when its hang was noticed, until the watchdog reloads it
        self.probed_models: tuple[str, ...] = ()  # the steps the liveness probe covers
        self.heals: list[Heal] = []  # every model the watchdog reloaded
        self.unhealthy: str | None = None  # why the watchdog gave up and stopped the server

    # -- addresses -----------------------------------------------------------------------------

    @property
    def _client_host(self) -> str:
        # A wildcard bind is reachable on loopback; IPv6 literals need brackets in a URL.
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def grpc_url(self) -> str:
        """host:port, as tritonclient.grpc expects it."""
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """host:port, as tritonclient.http expects it."""
        return f"{self._client_host}:{self.http_port}"

    @property
    def upstream_grpc_port(self) -> int:
        """Where tritonserver itself listens for gRPC (behind the proxy: a loopback port of its own)."""
        return self._upstream[1]

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC metadata that unlocks the admin APIs."""
        return {GRPC_ADMIN_HEADER: self.admin_key} if self.admin_key else {}

    def client(self, **kwargs) -> grpcclient.InferenceServerClient:
        """A gRPC client of this server (TLS set up as the server's)."""
        if self.tls is not None:
            kwargs.setdefault("ssl", True)
            kwargs.setdefault("root_certificates", str(self.tls.cert))
        return grpcclient.InferenceServerClient(self.grpc_url, **kwargs)

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------

    def command(self, layout: WheelLayout) -> list[str]:
        binary = self._binary_override or layout.binary
        return [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={layout.backend_dir}",
            f"--grpc-address={self._upstream[0]}",
            f"--grpc-port={self._upstream[1]}",
            f"--http-address={self._upstream[0]}",
            f"--http-port={self._upstream[2]}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            # Triton's defaults, pinned: exit-on-error makes a broken model end start() at once, and
            # strict readiness keeps /v2/health/ready false until every model is up (for probes).
            # extra_args come last so callers can still override them.
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Explicit model control (every model loaded at start) lets the watchdog and `serving.reload`
            # load a model again without restarting the server.
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self._security_args(),
            *self.extra_args,
        ]

    def _security_args(self) -> list[str]:
        args = []
        if self.admin_key:
            restricted = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={self.admin_key}"
            args += [f"--grpc-restricted-protocol={restricted}", f"--http-restricted-api={restricted}"]
        if self.tls is not None and self.proxy_settings is None:  # behind the proxy, nginx speaks TLS
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls.cert}",
                     f"--grpc-server-key={self.tls.key}", "--allow-http=false"]
        return args

    def start(self, ready_timeout_s: float = 120.0) -> list[str]:
        """Start the server and wait until it is live and every model in the repository is READY.

        Returns the ready model names. Raises ServerStartError (with the server log tail) otherwise;
        the process is stopped before raising.
        """
        if self._process is not None:
            raise RuntimeError("server already started")
        layout = WheelLayout.from_install(self._home) if self._home else WheelLayout.from_pytriton()
        if self.proxy_settings is not None:
            self._upstream = ("127.0.0.1", *free_ports(2))
        cmd = self.command(layout)
        if not os.access(cmd[0], os.X_OK):
            raise ServerStartError(f"tritonserver binary not found or not executable: {cmd[0]}")
        if not self.model_repository.is_dir():
            raise ServerStartError(f"model repository is not a directory: {self.model_repository}")
        install_stub(layout)

        output = self._open_log()
        # A session of its own keeps a terminal's Ctrl-C from reaching tritonserver directly:
        # shutdown is driven (and the shm cleaned up) by this process alone.
        self._process = subprocess.Popen(
            cmd,
            env=self._child_env(layout),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
        )
        try:
            if self.proxy_settings is not None:
                self._start_proxy(output)
            models = self._wait_ready(self._process, ready_timeout_s)
        except BaseException:
            self._start_failed = True
            self.stop(timeout_s=5.0)
            raise
        if self._watchdog_enabled:
            self._watchdog = threading.Thread(target=self._watch, name="stub-watchdog", daemon=True)
            self._watchdog.start()
            if self.liveness_interval_s > 0:
                self._start_liveness(models)
        return models

    def _start_proxy(self, output: IO[bytes] | None) -> None:
        settings, upstream = self.proxy_settings, self._upstream

        def config(workdir: Path) -> str:
            return render_config(workdir=workdir, host=self.host, grpc_port=self.grpc_port, http_port=self.http_port,
                                 upstream_grpc_port=upstream[1], upstream_http_port=upstream[2],
                                 settings=settings, tls=self.tls)

        self._proxy = NginxProxy(config, output)
        try:
            self._proxy.start()
        except ProxyError as exc:
            raise ServerStartError(str(exc)) from exc

    def _open_log(self) -> IO[bytes] | None:
        if self._inherit_output:
            return None
        if self._log_path is None:
            self._temp_log_dir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
            self._log_path = self._temp_log_dir / "tritonserver.log"
        self._log_handle = open(self._log_path, "ab")
        return self._log_handle

    def _child_env(self, layout: WheelLayout) -> dict[str, str]:
        env = {**os.environ, **self.env}
        # The stub's embedded interpreter locates site-packages through `python3` on PATH,
        # so this interpreter's bin dir (the venv's) must come first.
        env["PATH"] = _prepend_path(os.path.dirname(sys.executable), env.get("PATH"))
        # The binary's RPATH normally finds these already; this covers copies run from elsewhere.
        env["LD_LIBRARY_PATH"] = _prepend_path(str(layout.libs_dir), env.get("LD_LIBRARY_PATH"))
        return env

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        client = self.client(channel_args=_PROBE_CHANNEL_ARGS)
        try:
            while True:
                code = process.poll()
                if code is not None:
                    raise ServerStartError(self._failure(f"tritonserver exited during start-up with code {code}"))
                ready = self._probe(client)
                if ready is not None:
                    return ready
                if time.monotonic() >= deadline:
                    raise ServerStartError(self._failure(f"tritonserver not ready after {timeout_s:.0f} s"))
                time.sleep(_POLL_INTERVAL_S)
        finally:
            client.close()

    def _probe(self, client: grpcclient.InferenceServerClient) -> list[str] | None:
        """Ready model names once everything is READY; None while still coming up."""
        try:
            if not client.is_server_live(client_timeout=_PROBE_TIMEOUT_S):
                return None
            index = client.get_model_repository_index(as_json=True, headers=self.admin_headers,
                                                      client_timeout=_PROBE_TIMEOUT_S)
            models = index.get("models", [])
            # With exit-on-error the process would exit instead; this covers callers that turned it off.
            failed = [m for m in models if m.get("state") == "UNAVAILABLE"]
            if failed:
                reasons = "; ".join(f"{m['name']}: UNAVAILABLE: {m.get('reason', '')}" for m in failed)
                raise ServerStartError(self._failure(f"models failed to load: {reasons}"))
            names = sorted({m["name"] for m in models})
            if all(client.is_model_ready(name, client_timeout=_PROBE_TIMEOUT_S) for name in names):
                return names
        except InferenceServerException:
            pass  # not listening yet, or still loading
        return None

    def _failure(self, headline: str) -> str:
        if self._inherit_output or self._log_path is None:
            return f"{headline} (model repository {self.model_repository}; server output is above)"
        if self._log_handle is not None:
            self._log_handle.flush()
        lines = self._log_path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if _LOG_ERROR_LINE.search(line)]
        parts = [f"{headline} (model repository {self.model_repository}, log {self._log_path})"]
        if errors:
            parts += ["errors in the server log:", *errors]
        parts += [f"last {_LOG_TAIL_LINES} log lines:", *lines[-_LOG_TAIL_LINES:]]
        return "\n".join(parts)

    # -- watchdog ------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Reload a model whose python stub died (tritonserver itself never restarts it: every request to it
        would fail from then on). A model keeps as many stubs as it had when the server became ready; when a
        reload fails, the server is stopped so that its supervisor restarts it (the launcher exits non-zero)."""
        expected = self._stub_counts()
        client = self.client()
        try:
            while not self._watchdog_stop.wait(_WATCHDOG_INTERVAL_S):
                if not self.is_running():
                    return
                if self._proxy is not None and not self._proxy.is_running():
                    self.unhealthy = "the nginx proxy in front of the server exited"
                    log.error("%s; stopping the server", self.unhealthy)
                    self.send_signal(signal.SIGTERM)
                    return
                counts = self._stub_counts()
                for model, count in expected.items():
                    # A stop asked meanwhile means the stubs are exiting with the server: nothing to heal (a reload
                    # sent to a stopping server could block the stop for as long as its timeout).
                    if self._watchdog_stop.is_set():
                        return
                    if counts.get(model, 0) < count and not self._heal(client, model):
                        return
        finally:
            client.close()

    def _start_liveness(self, models: list[str]) -> None:
        """Build a probe request per python step (from the build's limits and the server's own answers) and
        probe them in a thread of their own. A repository without a build manifest (not built by this project)
        gets no probes: the stub-death watch still runs."""
        try:
            limits = ServingLimits.from_dict(json.loads((self.model_repository / BUILD_MANIFEST).read_text())["limits"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("no liveness probes: %s has no readable %s", self.model_repository, BUILD_MANIFEST)
            return
        client = self.client()
        try:
            probes = liveness.probe_inputs(client, limits, set(models))
        except InferenceServerException as exc:
            log.warning("no liveness probes: a step did not answer its probe at start: %s", exc.message())
            return
        finally:
            client.close()
        self.probed_models = tuple(sorted(probes))
        self._liveness = threading.Thread(target=self._probe_loop, args=(probes,), name="liveness", daemon=True)
        self._liveness.start()

    def _probe_loop(self, probes: dict[str, dict]) -> None:
        # One thread per model and round: a hung step must not delay the others' probes.
        client = self.client()
        try:
            while not self._watchdog_stop.wait(self.liveness_interval_s):
                results: dict[str, str | None] = {}
                threads = [threading.Thread(target=lambda m=m, v=v: results.__setitem__(
                    m, liveness.check(client, m, v, self.liveness_timeout_s, self._watchdog_stop)), daemon=True)
                    for m, v in probes.items() if m not in self._hung]
                started = time.monotonic()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                for model, why in results.items():
                    if why is None or self._watchdog_stop.is_set():
                        continue
                    if any(h.model == model and h.reloaded > started for h in self.heals):
                        continue  # its stub died and was reloaded meanwhile: the probe met the dead one
                    self._kill_hung(model, why)
        finally:
            client.close()

    def _kill_hung(self, model: str, why: str) -> None:
        stubs = [pid for pid, name in python_stubs(self.pid or -1).items() if name == model]
        log.error("model %s is hung: %s; killing its %d stub(s) for the watchdog to reload it", model, why,
                  len(stubs))
        self._hung[model] = time.monotonic()
        for pid in stubs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _stub_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for model in python_stubs(self.pid or -1).values():
            counts[model] = counts.get(model, 0) + 1
        return counts

    def _heal(self, client: grpcclient.InferenceServerClient, model: str) -> bool:
        noticed = time.monotonic()
        log.error("python stub of model %s died; reloading it", model)
        try:
            reload_model(client, model, self.admin_headers)
        except InferenceServerException as exc:
            self.unhealthy = f"model {model} lost its python stub and could not be reloaded: {exc.message()}"
            log.error("%s; stopping the server", self.unhealthy)
            self.send_signal(signal.SIGTERM)
            return False
        hung_since = self._hung.pop(model, None)
        if hung_since is not None:
            self.heals.append(Heal(model, hung_since, time.monotonic(), cause="stub hung"))
        else:
            self.heals.append(Heal(model, noticed, time.monotonic()))
        log.error("model %s reloaded %.1f s after its %s was noticed", model,
                  self.heals[-1].reloaded - self.heals[-1].noticed, "hang" if hung_since is not None else "death")
        return True

    def send_signal(self, signum: int) -> None:
        """Forward a signal to tritonserver if it is running (a stop signal also stops the watchdog: the stubs
        exiting with the server are not deaths to heal)."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._watchdog_stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signum)

    def wait(self) -> int:
        """Block until tritonserver exits; return its exit status."""
        if self._process is None:
            raise RuntimeError("server not started")
        return self._process.wait()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, escalate to SIGKILL after `timeout_s`, then remove the shm regions this server left.

        Returns the exit status, or None if the server was never started. Safe to call repeatedly.
        """
        process = self._process
        if process is None:
            return None
        self._watchdog_stop.set()
        for thread in (self._watchdog, self._liveness):
            if thread is not None and thread is not threading.current_thread():
                # Daemon threads: one caught in a probe or a reload of the stopping server must not hold the stop.
                thread.join(timeout=self.liveness_timeout_s + _WATCHDOG_INTERVAL_S)
        if self._proxy is not None:  # first: no new requests reach a server that is going away
            self._proxy.stop()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # What tritonserver leaves behind in its session (a python stub that has not yet noticed its parent is
        # gone, holding its shm and, from the CLI, the launcher's stdout) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        # Only once the server is gone can nothing still be using its regions; the prefix is this server's own.
        for region in _shm_regions(self.shm_prefix):
            Path(region).unlink(missing_ok=True)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        # Keep a temporary log after a failed start: its path is quoted in the exception.
        if self._temp_log_dir is not None and not self._start_failed:
            shutil.rmtree(self._temp_log_dir, ignore_errors=True)
            self._temp_log_dir = None
            self._log_path = None
        return process.returncode

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- CLI ---------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving.launcher",
        description="Serve a Triton model repository with the tritonserver from nvidia-pytriton.",
    )
    parser.add_argument("--model-repository", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for all models")
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument("--admin-key-file", type=Path, default=None,
                        help="file holding the admin key (created with a random key, mode 0600, when missing); "
                             f"${ADMIN_KEY_ENV} takes precedence. Default: a new random key in a private temp file")
    parser.add_argument("--open-admin", action="store_true",
                        help="leave the model-repository, shared-memory, logging and trace APIs open to anyone")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: serve gRPC over TLS (HTTP is then off)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--tritonserver-home", type=Path,
                        help="a Triton installation to run (e.g. /opt/tritonserver in the NGC container) instead "
                             "of the tritonserver from the nvidia-pytriton wheel")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="largest request body accepted, enforced by nginx in front of tritonserver before any "
                             f"byte reaches it (default {DEFAULT_MAX_REQUEST_BYTES}); 0 serves without the proxy "
                             "and without a limit")
    parser.add_argument("--max-inflight", type=int, default=DEFAULT_MAX_INFLIGHT,
                        help="requests in flight per port that nginx lets through to tritonserver; more are refused "
                             f"at once with UNAVAILABLE (HTTP 503) naming the limit (default {DEFAULT_MAX_INFLIGHT})")
    parser.add_argument("--no-watchdog", action="store_true",
                        help="do not reload a model whose python stub died or hung")
    parser.add_argument("--liveness-interval", type=float, default=2.0,
                        help="seconds between liveness probes of every python step (0: no probes; default 2)")
    parser.add_argument("--liveness-timeout", type=float, default=5.0,
                        help="a step that answers no probe within this many seconds and completes no other request "
                             "meanwhile is hung: its stubs are killed and it is reloaded (default 5)")
    parser.add_argument("tritonserver_args", nargs="*", metavar="-- TRITONSERVER_FLAG",
                        help="flags passed to tritonserver as given, after `--` (they override the launcher's)")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


def not_built_notes(repository: Path) -> list[str]:
    """The steps the build left out because the dataset cannot feed them (build_manifest.json "not_built")."""
    try:
        not_built = json.loads((repository / BUILD_MANIFEST).read_text()).get("not_built", {})
    except (OSError, ValueError):
        return []
    return [f"  not built: {name}: {why}" for name, why in sorted(not_built.items())]


def _exit_code(returncode: int) -> int:
    # Popen reports death by signal as -N; shells report it as 128+N.
    return 128 - returncode if returncode < 0 else returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(levelname)s %(message)s")
    extra_args = [f"--log-verbose={args.log_verbose}"] if args.log_verbose else []
    extra_args += args.tritonserver_args
    tls = Tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    proxy = (ProxySettings(max_request_bytes=args.max_request_bytes, max_inflight=args.max_inflight)
             if args.max_request_bytes > 0 else None)
    key_note = "admin APIs: open to anyone (--open-admin)"
    if args.open_admin:
        admin_key = ""
    else:
        key_file = args.admin_key_file
        if key_file is None and not os.environ.get(ADMIN_KEY_ENV):
            key_file = Path(tempfile.mkdtemp(prefix="recserve-admin-")) / "admin_key"
        try:
            admin_key = load_admin_key(key_file)
        except (OSError, ServerStartError) as exc:
            print(f"error: admin key: {exc}", file=sys.stderr)
            return 1
        where = f"${ADMIN_KEY_ENV}" if os.environ.get(ADMIN_KEY_ENV) else str(key_file)
        key_note = (f"admin APIs: need the key in {where} (gRPC metadata {GRPC_ADMIN_HEADER!r}, "
                    f"HTTP header {ADMIN_HEADER!r})")
    server = TritonServer(
        args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        extra_args=extra_args,
        log_file=INHERIT_OUTPUT,
        admin_key=admin_key,
        tls=tls,
        watchdog=not args.no_watchdog,
        liveness_interval_s=args.liveness_interval,
        liveness_timeout_s=args.liveness_timeout,
        tritonserver_home=args.tritonserver_home,
        proxy=proxy,
    )
    signalled: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        signalled.append(signum)
        server.send_signal(signum)

    # Installed before start() so a signal during model loading also shuts the server down cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)

    try:
        models = server.start(ready_timeout_s=args.ready_timeout)
    except ServerStartError as exc:
        if signalled:  # asked to stop while starting: not an error
            return _exit_code(server.stop() or 0)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if signalled:  # arrived before the process existed, so nothing was forwarded yet
        server.send_signal(signalled[0])

    http = f"{'https' if tls else 'http'}://{server.http_url}"
    if tls and not proxy:
        http = "off (tritonserver's HTTP has no TLS; the proxy gives it)"
    print(
        "\n".join(
            [
                f"tritonserver (pid {server.pid}) ready",
                *not_built_notes(args.model_repository),
                f"  gRPC:    {server.grpc_url}",
                f"  gRPC TLS: {'on' if tls else 'off'}",
                *([f"  behind the proxy, tritonserver itself: gRPC 127.0.0.1:{server.upstream_grpc_port}"]
                  if proxy else []),
                f"  HTTP:    {http}",
                f"  request size limit: {f'{proxy.max_request_bytes} bytes (nginx)' if proxy else 'none (--max-request-bytes 0)'}",
                f"  requests in flight: {f'{proxy.max_inflight} per port (nginx)' if proxy else 'unbounded'}",
                f"  metrics: {server.metrics_url}",
                f"  {key_note}",
                f"  models:  {', '.join(models) or '(none)'}",
                f"try: python -m clients.cli --url {server.grpc_url}",
            ]
        ),
        flush=True,
    )
    # Until tritonserver exits or a stop is asked; then stop() bounds the shutdown (SIGTERM, SIGKILL after its
    # timeout, the session's leftovers killed): tritonserver has been seen waiting forever for an idle python stub.
    while server.is_running() and not signalled:
        time.sleep(0.2)
    stopped = _exit_code(server.stop() or 0)
    if server.unhealthy:  # the watchdog stopped it: a supervisor should start it again
        print(f"error: {server.unhealthy}", file=sys.stderr)
        return 1
    return stopped


if __name__ == "__main__":
    sys.exit(main())
