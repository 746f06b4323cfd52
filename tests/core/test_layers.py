"""The layers contracts: every package of the project, and every part of services/, is in them, and an upward
import breaks them (`make test` runs `lint-imports` over the tree itself)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _contract(name: str) -> dict:
    (contract,) = [c for c in _pyproject()["tool"]["importlinter"]["contracts"] if c["name"].startswith(name)]
    return contract


def _names(layers: list[str]) -> set[str]:
    return {name.strip() for layer in layers for name in layer.split("|")}


def test_the_contract_covers_every_package() -> None:
    conf = _pyproject()
    packages = set(conf["tool"]["mypy"]["packages"])
    assert set(conf["tool"]["importlinter"]["root_packages"]) == packages
    assert _names(_contract("Layers")["layers"]) == packages
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "helm"}
    assert found == packages, "a top-level package is missing from the layers contract"


def test_every_part_of_services_stands_on_a_floor() -> None:
    """Every module and folder inside services/ is in the floors contract (an unlisted one could import
    anything), save the web chat's static files and the LangChain client, which imports nothing of the app."""
    floors = _names(_contract("Floors inside services/")["layers"])
    here = ROOT / "services"
    parts = {f"services.{p.stem}" for p in here.glob("*.py") if p.name != "__init__.py"}
    parts |= {f"services.{p.parent.name}" for p in here.glob("*/__init__.py")}
    assert parts - {"services.integrations"} == floors


def _lint(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(cwd)}
    )


def _tree_copy(tmp_path: Path) -> Path:
    import shutil

    for name in _pyproject()["tool"]["importlinter"]["root_packages"]:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _prepend(path: Path, line: str) -> None:
    path.write_text(line + "  # noqa: F401\n" + path.read_text(encoding="utf-8"))


def test_the_serving_path_importing_a_benchmark_breaks_the_layers(tmp_path: Path) -> None:
    """The contracts as configured (`make test` runs them over the tree), over a copy of the tree with the
    pipeline importing a benchmark and an engine importing the HTTP edge: each import is named as broken."""
    tree = _tree_copy(tmp_path)
    _prepend(tree / "services" / "pipeline" / "service.py", "import bench.runner")
    _prepend(tree / "services" / "workers" / "engines" / "shaping.py", "import services.http.errors")
    run = _lint(tree)
    assert run.returncode != 0
    assert "services.pipeline.service -> bench.runner" in run.stdout
    assert "services.workers.engines.shaping -> services.http.errors" in run.stdout
    assert "Contracts: 0 kept, 2 broken." in run.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The same contract shape over two throwaway packages, one importing upward."""
    for name, body in (("low", "import high.api\n"), ("high", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "api.py").write_text(body)
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_packages =\n    low\n    high\n\n"
        "[importlinter:contract:layers]\nname = layers\ntype = layers\nlayers =\n    high\n    low\n"
    )
    run = _lint(tmp_path, "--config", str(tmp_path / ".importlinter"))
    assert run.returncode != 0
    assert "low.api -> high.api" in run.stdout
