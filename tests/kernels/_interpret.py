"""Triton CPU-interpreter isolation shared by the kernel test files.

triton fixes interpreted vs compiled for its own helpers at its first import, so this module imports it with
TRITON_INTERPRET=1 and restores the variable at once; `interpreter_fixture` makes an autouse fixture that sets
it only while a test file's tests run, so it does not leak into other files. If triton was imported compiled
earlier in the session, those tests skip and `rerun_in_fresh_process` runs the file in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.jsa_attention import interpreter_usable

ROOT = Path(__file__).resolve().parents[2]


def _restore(old):
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


def _import_triton_interpreted() -> bool:
    """Import triton with TRITON_INTERPRET=1 (its helpers are fixed at first import), then restore the variable
    so the interpreter does not leak into other test files. False if triton was already imported compiled."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401

        return interpreter_usable()
    finally:
        _restore(old)


INTERPRETED = _import_triton_interpreted()


def interpreter_fixture(*exempt: str):
    """An autouse fixture: TRITON_INTERPRET=1 only while the file's tests run (not for the named tests)."""

    @pytest.fixture(autouse=True)
    def interpreter(request):
        if request.node.name in ("test_in_fresh_process", *exempt):
            yield
            return
        if not INTERPRETED:
            pytest.skip("triton was imported in compiled mode before this file; test_in_fresh_process runs it")
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        yield
        _restore(old)

    return interpreter


def rerun_in_fresh_process(test_file: str) -> None:
    """Another test file imported triton first (without the interpreter): rerun test_file in a fresh process."""
    if INTERPRETED:
        pytest.skip("the interpreter works in this process; the tests ran here")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", "-k",
                           "not test_in_fresh_process"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
