"""Tests for serving.launcher; most start the real tritonserver from the nvidia-pytriton wheel."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# Make `server` importable under plain `pytest` too (not only `python -m pytest`).
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from serving import launcher  # noqa: E402
from serving.launcher import ServerStartError, TritonServer, free_ports  # noqa: E402

grpcclient = pytest.importorskip("tritonclient.grpc")

CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0", data_type: TYPE_INT64, dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_INT64, dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""

ADD_ONE = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.int64))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

BROKEN = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("deliberately broken model")

    def execute(self, requests):
        return []
"""

READY_TIMEOUT_S = 40.0


def write_model(repo: Path, name: str, source: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    (repo / name / "1" / "model.py").write_text(source)


def make_server(repo: Path, **kwargs: object) -> TritonServer:
    grpc_port, http_port, metrics_port = free_ports(3)
    return TritonServer(repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, **kwargs)


def shm_regions() -> set[str]:
    return set(glob.glob(launcher.SHM_GLOB))


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def add_one_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE)
    return repo


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_serves_add_one_over_grpc_and_cleans_up(add_one_repo: Path) -> None:
    shm_before = shm_regions()
    with make_server(add_one_repo) as server:
        pid = server.pid
        assert pid is not None and server.is_running()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        data = np.array([[1, 2, 41]], dtype=np.int64)
        infer_input = grpcclient.InferInput("INPUT0", list(data.shape), "INT64")
        infer_input.set_data_from_numpy(data)
        result = client.infer("add_one", [infer_input], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[2, 3, 42]])
        client.close()
    assert process_gone(pid)
    assert shm_regions() - shm_before == set()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_stop_removes_shm_left_by_killed_server(add_one_repo: Path) -> None:
    shm_before = shm_regions()
    server = make_server(add_one_repo)
    server.start(ready_timeout_s=READY_TIMEOUT_S)
    assert shm_regions() - shm_before, "python backend should have created a shm region"
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)  # no chance to clean up after itself
    assert server.stop() == -signal.SIGKILL
    assert shm_regions() - shm_before == set()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_broken_model_fails_fast_with_model_named(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE)
    write_model(repo, "broken_model", BROKEN)
    log_file = tmp_path / "server.log"  # a failed start keeps its log; keep it out of the global temp dir
    server = make_server(repo, log_file=log_file)
    started = time.monotonic()
    with pytest.raises(ServerStartError) as excinfo:
        server.start(ready_timeout_s=READY_TIMEOUT_S)
    assert time.monotonic() - started < READY_TIMEOUT_S / 2
    message = str(excinfo.value)
    assert "exited during start-up" in message
    assert "broken_model" in message
    assert "deliberately broken model" in message
    assert not server.is_running()
    assert "failed to load 'broken_model'" in log_file.read_text()


@pytest.mark.timeout(10)
def test_missing_binary_is_a_clear_error(add_one_repo: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "tritonserver"
    server = make_server(add_one_repo, binary=missing)
    with pytest.raises(ServerStartError, match="tritonserver binary not found") as excinfo:
        server.start(ready_timeout_s=5)
    assert str(missing) in str(excinfo.value)
    assert server.pid is None


@pytest.mark.timeout(10)
def test_missing_stub_for_python_version_is_a_clear_error(
    add_one_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "PYTHON_VERSION", "3.99")
    server = make_server(add_one_repo)
    with pytest.raises(ServerStartError, match=r"no Triton python backend stub for Python 3\.99"):
        server.start(ready_timeout_s=5)
    assert server.pid is None


def test_free_ports_are_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_cli_serves_until_sigterm(add_one_repo: Path) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    shm_before = shm_regions()
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.launcher",
            f"--model-repository={add_one_repo}",
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            f"--metrics-port={metrics_port}",
            f"--ready-timeout={READY_TIMEOUT_S}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert cli.stdout is not None
        output = []
        for line in cli.stdout:
            output.append(line)
            if line.startswith("try: "):
                break
        banner = "".join(output)
        assert f"gRPC:    127.0.0.1:{grpc_port}" in banner, banner
        assert "models:  add_one" in banner
        assert f"try: python -m clients.cli --url 127.0.0.1:{grpc_port}" in banner
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_model_ready("add_one")
        client.close()

        cli.send_signal(signal.SIGTERM)
        cli.stdout.read()  # drain so the server never blocks on a full pipe
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    assert shm_regions() - shm_before == set()
