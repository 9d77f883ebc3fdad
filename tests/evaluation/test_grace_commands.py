"""The command chains published in docs/results/grace*.md run as written: every published `python -m
evaluation.evaluate` line is parsed from the page, run in order on a tiny budget (a small simulator instead of
the page's dataset, one seed, one epoch, paths under a temp dir), and the combining / rendering step builds
its table and BENCHMARKS.md section from the runs before it. A renamed or removed flag, a changed output
naming (`--out X.md` writes `X.json`, which `--combine` reads) or a broken combine fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from evaluation import evaluate as ev
from evaluation.pipeline_quality import with_section

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("grace.md", "grace_sasrec_b128.md")

# The budget and data that replace the published ones; every other flag and value runs as published.
TINY = {"--datasets": ["sim"], "--sim-users": ["60"], "--sim-items": ["40"], "--seeds": None, "--epochs": ["1"],
        "--max-examples": ["64"], "--max-history": ["10"]}


def published_commands(page: Path) -> list[list[str]]:
    """The argument lists of the fenced command block under "Generated ... by:" (trailing `# date` comments
    dropped)."""
    block = re.search(r"\bby:\n\n```\n(.*?)\n```", page.read_text(), re.S)
    assert block, f"{page}: no published command block"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]
    for argv in commands:
        assert argv[:3] == ["python", "-m", "evaluation.evaluate"], f"{page}: unexpected command {argv}"
    return [argv[3:] for argv in commands]


def _values(argv: list[str], flag: str) -> list[str] | None:
    if flag not in argv:
        return None
    i = argv.index(flag) + 1
    end = next((j for j in range(i, len(argv)) if argv[j].startswith("--")), len(argv))
    return argv[i:end]


def _with(argv: list[str], flag: str, values: list[str]) -> list[str]:
    """argv with flag's values replaced (or the flag appended)."""
    if flag not in argv:
        return argv + [flag, *values]
    i = argv.index(flag)
    return argv[:i + 1] + values + argv[i + 1 + len(_values(argv, flag)):]


def tiny(argv: list[str], paths: dict[str, Path]) -> list[str]:
    """One published command on the tiny budget, its files moved into the temp dir (`paths`: published path ->
    where it goes)."""
    argv = [str(paths.get(a, a)) for a in argv]
    if "--combine" in argv or "--from-result" in argv:
        return argv  # combining / rendering: only its files move
    for flag, values in TINY.items():
        if flag == "--seeds":
            values = (_values(argv, flag) or ["0"])[:1]
        argv = _with(argv, flag, values)
    return argv


def _temp_paths(commands: list[list[str]], tmp: Path) -> dict[str, Path]:
    """Every file the chain names, mapped into tmp (the .md outputs and the .json beside them by name, so a
    combine step reads what the runs before it wrote); BENCHMARKS.md becomes a copy of the committed one."""
    paths = {}
    for argv in commands:
        for token in argv:
            if token.endswith((".md", ".json")):
                paths[token] = tmp / ("BENCHMARKS.md" if Path(token).name == "BENCHMARKS.md" else Path(token).name)
    (tmp / "BENCHMARKS.md").write_text((ROOT / "BENCHMARKS.md").read_text())
    return paths


@pytest.mark.parametrize("page", PAGES)
def test_published_grace_commands_run_as_written(page, tmp_path):
    commands = published_commands(ROOT / "docs" / "results" / page)
    paths = _temp_paths(commands, tmp_path)
    threads = torch.get_num_threads()
    registry, descriptions = dict(ev.REGISTRY), dict(ev.DESCRIPTIONS)
    try:
        for argv in commands:
            ev.main(tiny(argv, paths))  # argparse exits (SystemExit) on a flag that no longer exists
    finally:
        torch.set_num_threads(threads)  # evaluate sets its --threads process-wide
        # --suffix registers models process-wide: later renderings of the pages must not see them
        ev.REGISTRY.clear(), ev.REGISTRY.update(registry)
        ev.DESCRIPTIONS.clear(), ev.DESCRIPTIONS.update(descriptions)

    final = commands[-1]
    out = paths[_values(final, "--out")[0]]
    text, raw = out.read_text(), out.with_suffix(".json")
    assert raw.is_file(), "the last published command must leave the result file the page is rendered from"
    # Every model the chain trained is in the final table; the published commands are recorded in it.
    models = [m for argv in commands for m in (_values(argv, "--models") or [])]
    assert models, "the chain trains no model"
    for model in models:
        assert f"| {model} |" in text, f"{model} missing from the rendered table"
    for argv in commands:
        assert shlex.join(tiny(argv, paths)) in text
    benchmarks = _values(final, "--benchmarks")
    if benchmarks:
        written = paths[benchmarks[0]].read_text()
        section = ev.benchmark_section(text, out)
        assert written == with_section(written, section, ev.SECTION) and section in written


def test_parser_reads_the_published_chain():
    """The chain of grace.md as the page publishes it: three runs, then the combine that writes the page."""
    commands = published_commands(ROOT / "docs" / "results" / "grace.md")
    assert [c for c in commands if "--combine" in c] == [commands[-1]]
    runs = [Path(_values(c, "--out")[0]).with_suffix(".json").as_posix() for c in commands[:-1]]
    assert _values(commands[-1], "--combine") == runs
    assert _values(commands[-1], "--out") == ["docs/results/grace.md"]
    assert _with(["--a", "1", "2", "--b"], "--a", ["3"]) == ["--a", "3", "--b"]
    assert _with(["--b"], "--a", ["3"]) == ["--b", "--a", "3"]
