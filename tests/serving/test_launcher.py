"""Tests for serving.launcher; most start the real tritonserver from the nvidia-pytriton wheel."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import threading
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
from tests.conftest import calls_in_background  # noqa: E402

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


def shm_regions(prefix: str = launcher.SHM_PREFIX) -> set[str]:
    return set(glob.glob(f"/dev/shm/{prefix}*"))


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
    assert shm_regions(server.shm_prefix) == set()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_stop_removes_shm_left_by_killed_server(add_one_repo: Path) -> None:
    server = make_server(add_one_repo)
    server.start(ready_timeout_s=READY_TIMEOUT_S)
    assert shm_regions(server.shm_prefix), "python backend should have created a shm region"
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)  # no chance to clean up after itself
    assert server.stop() == -signal.SIGKILL
    assert shm_regions(server.shm_prefix) == set()


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
@pytest.mark.timeout(120)
def test_cli_serves_until_sigterm(add_one_repo: Path) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
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
            "--",
            "--allow-metrics=false",  # passed through to tritonserver as given
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
        assert "admin APIs: need the key in" in banner
        with pytest.raises(OSError):  # the passed-through flag turned the metrics endpoint off
            socket.create_connection(("127.0.0.1", metrics_port), timeout=2).close()
        assert shm_regions(f"{launcher.SHM_PREFIX}{cli.pid}_")

        # Drained by a thread, so the server never blocks on a full pipe and the launcher's exit is timed on its
        # own; the pipe's end (every process that shared the launcher's stdout gone: tritonserver and its stubs)
        # is checked after it.
        drain = threading.Thread(target=cli.stdout.read, daemon=True)
        drain.start()
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0
        drain.join(timeout=15)
        assert not drain.is_alive(), "a child of the launcher still holds its stdout after it exited"
    finally:
        if cli.poll() is None:
            cli.kill()
    assert shm_regions(f"{launcher.SHM_PREFIX}{cli.pid}_") == set()


def infer_add_one(client, value: int = 1) -> int:
    data = np.array([[value]], dtype=np.int64)
    infer_input = grpcclient.InferInput("INPUT0", list(data.shape), "INT64")
    infer_input.set_data_from_numpy(data)
    return int(client.infer("add_one", [infer_input], client_timeout=10).as_numpy("OUTPUT0")[0, 0])


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_a_killed_stub_is_reloaded_by_the_watchdog(add_one_repo: Path) -> None:
    """tritonserver never restarts a dead python stub (every request to that model fails from then on); the
    launcher's watchdog notices and reloads the model, so the model answers again within seconds."""
    with make_server(add_one_repo) as server:
        client = server.client()
        assert infer_add_one(client) == 2
        stubs = launcher.python_stubs(server.pid)
        assert list(stubs.values()) == ["add_one"]
        killed_at = time.monotonic()
        os.kill(next(iter(stubs)), signal.SIGKILL)
        while True:
            try:
                assert infer_add_one(client, 41) == 42
                break
            except Exception:  # INTERNAL: stub not healthy, until the reload
                assert time.monotonic() - killed_at < 30, "the model never answered again"
                time.sleep(0.1)
        recovered_s = time.monotonic() - killed_at
        assert [heal.model for heal in server.heals] == ["add_one"]
        assert recovered_s < 10, recovered_s
        assert set(launcher.python_stubs(server.pid).values()) == {"add_one"}
        client.close()


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_admin_apis_need_the_key_and_inference_does_not(add_one_repo: Path) -> None:
    with make_server(add_one_repo, admin_key="s3cret") as server:
        client = server.client()
        assert infer_add_one(client) == 2  # inference, health and metadata stay open
        assert client.is_model_ready("add_one")
        for call in (lambda **h: client.get_model_repository_index(**h),
                     lambda **h: client.unload_model("add_one", **h),
                     lambda **h: client.get_log_settings(**h),
                     lambda **h: client.get_system_shared_memory_status(**h)):
            with pytest.raises(Exception, match="admin-key"):
                call()
            with pytest.raises(Exception, match="admin-key"):
                call(headers={launcher.GRPC_ADMIN_HEADER: "wrong"})
        assert client.is_model_ready("add_one"), "a refused unload must not unload"
        index = client.get_model_repository_index(headers={launcher.GRPC_ADMIN_HEADER: "s3cret"}, as_json=True)
        assert [m["name"] for m in index["models"]] == ["add_one"]
        client.close()


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_tls_serves_grpc_and_refuses_plaintext(add_one_repo: Path, self_signed_cert) -> None:
    cert, key = self_signed_cert
    # start() succeeding shows the readiness probe speaks TLS (and the admin key) too.
    with make_server(add_one_repo, tls=launcher.Tls(cert, key)) as server:
        client = server.client()
        assert infer_add_one(client, 6) == 7
        client.close()
        plain = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(Exception):
            plain.is_server_live(client_timeout=3)
        plain.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_cleanup_after_a_crash_removes_only_its_own_shm(add_one_repo: Path) -> None:
    with make_server(add_one_repo) as survivor:
        crashed = make_server(add_one_repo)
        crashed.start(ready_timeout_s=READY_TIMEOUT_S)
        own, others = shm_regions(crashed.shm_prefix), shm_regions(survivor.shm_prefix)
        assert own and others and not own & others
        os.kill(crashed.pid, signal.SIGKILL)
        crashed.stop()
        assert not shm_regions(crashed.shm_prefix)
        assert shm_regions(survivor.shm_prefix) == others
        client = survivor.client()
        assert infer_add_one(client, 9) == 10
        client.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_hot_reload_under_load_fails_no_request_and_a_broken_version_leaves_the_old_one(add_one_repo: Path) -> None:
    with make_server(add_one_repo, admin_key="k3y") as server:
        client = server.client()

        def reload() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "serving.reload", "--url", server.grpc_url, "add_one"],
                                  cwd=REPO_ROOT, env={**os.environ, launcher.ADMIN_KEY_ENV: "k3y"},
                                  capture_output=True, text=True, timeout=60)

        with calls_in_background(lambda: infer_add_one(client, 1)) as (answers, errors):
            time.sleep(0.5)
            (add_one_repo / "add_one" / "2").mkdir()  # a new version: adds two
            (add_one_repo / "add_one" / "2" / "model.py").write_text(ADD_ONE.replace("x + 1", "x + 2"))
            done = reload()
            assert done.returncode == 0, done.stderr
            assert "add_one: reloaded in" in done.stdout
            time.sleep(0.5)
            assert answers[-1] == 3, "the new version serves"

            (add_one_repo / "add_one" / "3").mkdir()  # a version that fails to load
            (add_one_repo / "add_one" / "3" / "model.py").write_text(BROKEN)
            refused = reload()
            assert refused.returncode == 1
            assert "not reloaded, the running version keeps serving" in refused.stderr
            assert "deliberately broken model" in refused.stderr
            assert "Traceback" not in refused.stderr
            time.sleep(0.5)
        client.close()
        assert errors == [], errors[:3]
        assert set(answers) == {2, 3} and answers[-1] == 3, "version 2 still serves after 3 failed"
        assert server.is_running() and server.heals == []  # a reload is not a death to heal


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_runs_a_triton_installation_as_in_the_container(add_one_repo: Path, tmp_path: Path) -> None:
    """--tritonserver-home (the Dockerfile's /opt/tritonserver): bin/, backends/ with the stub in place, lib/."""
    wheel = launcher.WheelLayout.from_pytriton()
    launcher.install_stub(wheel)
    home = tmp_path / "tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "tritonserver").symlink_to(wheel.binary)
    (home / "backends").symlink_to(wheel.backend_dir)
    (home / "lib").symlink_to(wheel.libs_dir)
    server = make_server(add_one_repo, tritonserver_home=home)
    assert server.command(launcher.WheelLayout.from_install(home))[0] == str(home / "bin" / "tritonserver")
    with server:
        client = server.client()
        assert infer_add_one(client, 1) == 2
        client.close()
