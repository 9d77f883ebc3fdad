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
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.contract import BUILD_MANIFEST

# Passing this as `log_file` lets the server write straight to the launcher's stdout/stderr.
INHERIT_OUTPUT = "-"

# The stub must match the Python that runs the models; module-level so tests can fake a mismatch.
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"

SHM_GLOB = "/dev/shm/triton_python_backend_shm_region_*"

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


def _shm_regions() -> set[str]:
    return set(glob.glob(SHM_GLOB))


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
    ) -> None:
        """`log_file`: None logs to a temporary file (its tail is quoted on failure, and it is deleted
        on a clean stop); INHERIT_OUTPUT ("-") shares the launcher's stdout/stderr; any other value
        is a path to append to. `binary` overrides the tritonserver from the wheel."""
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self._binary_override = Path(binary) if binary is not None else None
        self._inherit_output = log_file == INHERIT_OUTPUT
        self._log_path = None if log_file is None or self._inherit_output else Path(log_file)
        self._temp_log_dir: Path | None = None
        self._log_handle: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._shm_before: set[str] = set()
        self._start_failed = False

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
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            # Triton's defaults, pinned: exit-on-error makes a broken model end start() at once, and
            # strict readiness keeps /v2/health/ready false until every model is up (for probes).
            # extra_args come last so callers can still override them.
            "--exit-on-error=true",
            "--strict-readiness=true",
            *self.extra_args,
        ]

    def start(self, ready_timeout_s: float = 120.0) -> list[str]:
        """Start the server and wait until it is live and every model in the repository is READY.

        Returns the ready model names. Raises ServerStartError (with the server log tail) otherwise;
        the process is stopped before raising.
        """
        if self._process is not None:
            raise RuntimeError("server already started")
        layout = WheelLayout.from_pytriton()
        cmd = self.command(layout)
        if not os.access(cmd[0], os.X_OK):
            raise ServerStartError(f"tritonserver binary not found or not executable: {cmd[0]}")
        if not self.model_repository.is_dir():
            raise ServerStartError(f"model repository is not a directory: {self.model_repository}")
        install_stub(layout)

        self._shm_before = _shm_regions()
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
            return self._wait_ready(self._process, ready_timeout_s)
        except BaseException:
            self._start_failed = True
            self.stop(timeout_s=5.0)
            raise

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
        client = grpcclient.InferenceServerClient(self.grpc_url, channel_args=_PROBE_CHANNEL_ARGS)
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
            index = client.get_model_repository_index(as_json=True, client_timeout=_PROBE_TIMEOUT_S)
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

    def send_signal(self, signum: int) -> None:
        """Forward a signal to tritonserver if it is running."""
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
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Only once the server is gone can nothing still be using its regions. A region that
        # appeared meanwhile could belong to another server started in the same window; accepted.
        for region in _shm_regions() - self._shm_before:
            Path(region).unlink(missing_ok=True)
        # A repeated stop() must not claim regions of servers started after this one.
        self._shm_before = _shm_regions()
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
    return parser.parse_args(argv)


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
    extra_args = [f"--log-verbose={args.log_verbose}"] if args.log_verbose else []
    server = TritonServer(
        args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        extra_args=extra_args,
        log_file=INHERIT_OUTPUT,
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

    print(
        "\n".join(
            [
                f"tritonserver (pid {server.pid}) ready",
                *not_built_notes(args.model_repository),
                f"  gRPC:    {server.grpc_url}",
                f"  HTTP:    http://{server.http_url}",
                f"  metrics: {server.metrics_url}",
                f"  models:  {', '.join(models) or '(none)'}",
                f"try: python -m clients.cli --url {server.grpc_url}",
            ]
        ),
        flush=True,
    )
    server.wait()
    return _exit_code(server.stop() or 0)


if __name__ == "__main__":
    sys.exit(main())
