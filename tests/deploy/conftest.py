"""Shared helpers of the deployment checks: the helm binary `make helm` installs, and rendering."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ragyard"
RAYSERVICE_SCHEMA = ROOT / "helm" / "schemas" / "rayservice-ray.io-v1.json"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A CLI from this venv (or PATH). `make test` installs helm and sets RAGYARD_REQUIRE_HELM=1: there a
    missing helm fails the test instead of skipping it."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        if os.environ.get("RAGYARD_REQUIRE_HELM") == "1":
            pytest.fail(f"{name} is not installed (`make helm` / `make install`)")
        pytest.skip(f"{name} is not installed (`make helm` / `make install`)")
    return found


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm_template(*extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(tool("helm"), "template", "rel", CHART, "--namespace", "ragyard", *extra, check=check)


def documents(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")
