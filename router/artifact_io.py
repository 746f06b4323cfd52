"""Reading and writing the router's JSON artifacts (the quality table, the latency priors): one place
for the atomic write and for the errors a missing, unreadable or foreign file gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router.errors import RouterArtifactError


def read_json(path: str | Path, what: str, fmt: int, build: str) -> dict[str, Any]:
    """The artifact's content, checked to be a JSON object of format ``fmt``. ``what`` names it in the
    errors ("quality table"); ``build`` is the command that makes one."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RouterArtifactError(f"{what} {path} does not exist; build one with `{build}`") from exc
    except (OSError, ValueError) as exc:
        raise RouterArtifactError(f"{what} {path} is unreadable: {exc}") from exc
    if not isinstance(content, dict) or content.get("format") != fmt:
        raise RouterArtifactError(f"{what} {path} has another format (expected {fmt})")
    return content


def write_json(path: str | Path, content: dict[str, Any]) -> Path:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
