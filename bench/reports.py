"""Writing a benchmark's report: ``<name>.json`` (goals, results, settings, the machine) and ``<name>.md``."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_report(
    out: str | Path,
    name: str,
    goals: dict[str, Any],
    results: dict[str, Any],
    settings: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
) -> str:
    """Write both files under ``out``; the markdown (``markdown`` renders it from the report)."""
    report = {
        "goals": goals,
        "results": results,
        "settings": settings,
        "machine": {"cpus": os.cpu_count() or 0, "python": platform.python_version()},
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md = markdown(report)
    (out_dir / f"{name}.md").write_text(md, encoding="utf-8")
    return md
