"""The import contracts of pyproject.toml hold, name every module, and catch a violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
PACKAGES = tuple(CONFIG["root_packages"])
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
    "lint-imports"
)

pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd goes first on lint-imports' sys.path, so a copy there shadows the installed tree.
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _layered_modules() -> set[str]:
    (layers,) = (c for c in CONFIG["contracts"] if c["type"] == "layers")
    names = set()
    for layer in layers["layers"]:
        for tail in layer.replace("|", ":").split(":"):
            names.add(tail.strip().strip("()"))
    return names


def test_contracts_hold() -> None:
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_every_module_is_in_a_layer() -> None:
    """import-linter's `exhaustive` needs containers, and our layers cut across packages:
    this is the same check, so that a new module cannot stay outside the contract."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    layered = _layered_modules()

    def placed(m: str) -> bool:
        return any(m == x or m.startswith(x + ".") for x in layered)

    unplaced = sorted(m for m in graph.modules if not placed(m))
    # A package's __init__ above the layers (daq, daq.control, ...) is no layer of its own;
    # it stays outside only while it imports nothing of the project.
    parents = {m for m in unplaced if any(x.startswith(m + ".") for x in layered)}
    assert sorted(set(unplaced) - parents) == [], "add these modules to a layer in pyproject.toml"
    for p in sorted(parents):
        internal = {m for m in graph.find_modules_directly_imported_by(p)
                    if m.split(".")[0] in PACKAGES}
        assert not internal, f"{p} imports {sorted(internal)}: give it a layer"


def test_contracts_catch_late_imports(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    late = {
        "daq/wire.py": "import daq.launch",  # foundation -> system
        "simulators/physics.py": "import daq.app_commands",  # data path -> system
        "daq/hits.py": "import trigger",  # foundation -> a data-path package's root
        "trigger/core.py": "import asyncio",  # pure core -> an event loop
    }
    for path, stmt in late.items():
        with (tmp_path / path).open("a") as f:
            f.write(f"\n\ndef _layer_violation() -> None:\n    {stmt}\n")

    res = _lint(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "3 broken" in out
    for importer, imported in [("daq.wire", "daq.launch"),
                               ("simulators.physics", "daq.app_commands"),
                               ("daq.hits", "trigger"), ("trigger.core", "asyncio")]:
        assert f"{importer} -> {imported}" in out, out
