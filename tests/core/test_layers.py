"""The layers contract: every package of the project is in it, and the tree keeps it (an upward import
fails here and in `make test`)."""

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


def test_the_contract_covers_every_package() -> None:
    conf = _pyproject()
    packages = set(conf["tool"]["mypy"]["packages"])
    linter = conf["tool"]["importlinter"]
    assert set(linter["root_packages"]) == packages
    (layers,) = [c["layers"] for c in linter["contracts"] if c["type"] == "layers"]
    in_layers = {name.strip() for layer in layers for name in layer.split("|")}
    assert in_layers == packages
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "helm"}
    assert found == packages, "a top-level package is missing from the layers contract"


def _lint(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(cwd)}
    )


def test_the_tree_keeps_the_layers() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    contracts = len(_pyproject()["tool"]["importlinter"]["contracts"])
    assert f"{contracts} kept, 0 broken" in run.stdout


def test_the_benchmarks_stay_off_the_serving_path(tmp_path: Path) -> None:
    """The forbidden contract as configured, over a copy of the tree with the pipeline importing a benchmark."""
    import shutil

    for name in ("core", "cache", "retrieval", "router", "services"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    rag = tmp_path / "services" / "rag.py"
    rag.write_text("import services.evaluation.bench  # noqa: F401\n" + rag.read_text(encoding="utf-8"))
    run = _lint(tmp_path)
    assert run.returncode != 0
    assert "The serving path never imports the benchmarks" in run.stdout and "BROKEN" in run.stdout


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
