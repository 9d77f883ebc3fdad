"""The serving room never imports torch: every served model.py imports with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCK_TORCH = """
import importlib.abc, importlib.util, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "triton" or name.startswith("triton."):
            raise ImportError(f"{name} is not available to the serving room")
        return None
sys.meta_path.insert(0, NoTorch())
"""

IMPORT_ALL = """
import importlib.util, pathlib, pkgutil
import serving
for info in pkgutil.walk_packages(serving.__path__, "serving."):
    importlib.import_module(info.name)
for path in sorted(pathlib.Path("model_repository").glob("*/1/model.py")):
    spec = importlib.util.spec_from_file_location(f"served_{path.parts[1]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "TritonPythonModel"), path
    print(path.parts[1])
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_every_served_model_and_serving_module_imports_without_torch():
    proc = _run(IMPORT_ALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = set(proc.stdout.split())
    from serving.graph import STEPS

    assert served == set(STEPS)


def test_the_blocker_really_blocks_torch():
    proc = _run("import torch")
    assert proc.returncode != 0 and "not available to the serving room" in proc.stderr
