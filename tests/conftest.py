"""Session fixtures: the built model repository, and one real tritonserver on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """The repository built by the setup command; built here (smaller training budget) when missing."""
    repo = Path(os.environ.get("RECSERVE_MODEL_REPOSITORY", ROOT / "model_repository"))
    if not (repo / "build_manifest.json").exists():
        repo = tmp_path_factory.mktemp("model_repository")
        subprocess.run([sys.executable, "-m", "exporters.build_repository", "--out", str(repo),
                        "--grace-examples", "4000"], cwd=ROOT, check=True)
    return repo


@contextlib.contextmanager
def run_server(repository: Path, **options):
    """A real tritonserver on free loopback ports serving `repository`, stopped on exit (`options` go to
    TritonServer)."""
    from serving.launcher import TritonServer, free_ports

    grpc_port, http_port, metrics_port = free_ports(3)
    server = TritonServer(repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                          **options)
    server.start(ready_timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_server(model_repository):
    with run_server(model_repository) as server:
        yield server


@pytest.fixture(scope="session")
def reference(model_repository):
    from models.reference import ReferencePipeline

    return ReferencePipeline(model_repository)


@contextlib.contextmanager
def calls_in_background(call, workers: int = 3):
    """`workers` threads calling `call` in a loop until the block ends; yields (answers, errors), both growing."""
    stop, answers, errors = threading.Event(), [], []

    def loop():
        while not stop.is_set():
            try:
                answers.append(call())
            except Exception as exc:  # noqa: BLE001 - collected for the caller to check
                errors.append(str(exc))

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        yield answers, errors
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@pytest.fixture
def self_signed_cert(tmp_path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for 127.0.0.1 and localhost, valid for a day."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate to test TLS with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key
