"""Where a result came from, written into every result file: the command, the commit, the date and the machine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from kernels.machine import cpu_description

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    # Result files and the pages rendered from them change while a benchmark chain runs: not code changes.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/results",
                            ":!BENCHMARKS.md"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return (proc.stdout.strip() or "unknown") + ("+uncommitted changes" if dirty else "")


def provenance(module: str, argv: Sequence[str] | None = None) -> dict[str, str]:
    args = list(sys.argv[1:] if argv is None else argv)
    return {"command": " ".join(["python", "-m", module, *args]), "commit": commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": cpu_description()}


def line(result: dict) -> str:
    """One markdown line saying where `result` came from."""
    return f"`{result['command']}` at commit {result['commit']}, {result['date']}, {result['machine']}"
