"""The quality gates' own set-up: locked dependencies and the layering contracts.

`make lint` runs ruff, mypy and import-linter; these tests check what would silently rot: that
the lock files pin every dependency pyproject.toml declares (with hashes), that the venv and the
image install from them, and that the import-linter contracts hold and would catch a violation.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, str]:
    """{package: version} of a pip-compile lock file, each entry checked to carry hashes."""
    text = (ROOT / lock).read_text()
    found = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n\s+--hash=sha256:", text, re.M))
    assert found, f"{lock} pins nothing with hashes"
    return {normalized(k): v for k, v in found.items()}


def declared(*extras: str) -> set[str]:
    """The dependencies pyproject.toml declares (as installed by make venv), with these extras."""
    out = set()
    for spec in metadata.requires("fifoq") or []:
        requirement, _, marker = spec.partition(";")
        extra = re.search(r"extra == \"([^\"]+)\"", marker)
        if extra is None or extra.group(1) in extras:
            out.add(normalized(NAME.match(requirement).group(1)))  # type: ignore[union-attr]
    assert out, "fifoq is not installed (make venv)"
    return out


def test_quality_lock_files_pin_every_declared_dependency_with_hashes() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert declared() <= set(runtime), sorted(declared() - set(runtime))
    assert declared("test", "dev", "bench") <= set(dev), sorted(declared("test", "dev", "bench") - set(dev))
    assert {"ruff", "mypy", "import-linter", "pip-tools"} <= set(dev)
    shared = set(runtime) & set(dev)
    assert {k: runtime[k] for k in shared} == {k: dev[k] for k in shared}, "the two locks disagree"


def test_quality_venv_and_image_install_from_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r $(LOCK)" in makefile and "LOCK := requirements-dev.lock" in makefile
    assert re.search(r"^\$\(VENV\)/\.stamp: pyproject\.toml \$\(LOCK\)$", makefile, re.M)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make lint") < ci.index("exec make test")


def lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "lint-imports is not installed (make venv installs it from requirements-dev.lock)"
    only = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run([exe, "--no-cache", *only], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_quality_layering_contracts_hold() -> None:
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("connectors/registry.py", "import admin.config", "layers"),
    ("backend/values.py", "import demo", "layers"),
    ("admin/config.py", "import pika", "pika"),
    ("demo/scenarios.py", "import pymongo", "pymongo"),
])
def test_quality_layering_contracts_catch_a_violation(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The contracts are not vacuous: one forbidden import in a copy of the code breaks one."""
    for item in ("pyproject.toml", "backend", "connectors", "admin", "demo", "bench", "fifoq"):
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / item)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # a violation\n")
    assert lint_imports(tmp_path, contract).returncode != 0
    others = [c for c in ("layers", "pika", "pymongo") if c != contract]
    res = lint_imports(tmp_path, *others)
    assert res.returncode == 0, res.stdout[-2000:]
