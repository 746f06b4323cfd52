"""Plug-ins named as ``"module:Attribute"`` strings (engines, cache backends, retrieval policies, and the
operator's own in the config), imported only when first used. One helper, so every registry parses and
reports a bad target the same way; each caller turns `LoadError` into its own package's error."""

from __future__ import annotations

import importlib
from typing import Any


class LoadError(ValueError):
    """The target is not ``"module:Attribute"``, or importing it failed."""


def load_object(target: str) -> Any:
    """The attribute ``target`` names (``"package.module:Name"``), its module imported on the way."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise LoadError(f'{target!r} is not "module:Class"')
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise LoadError(f"cannot load {target!r}: {exc}") from exc
