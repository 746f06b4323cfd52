"""`ragyard bench retrieval` at a small limit: every search mode measured on a real dev file, recall that can
only grow with k, the table and JSON written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.model]  # the real embedder


def test_bench_retrieval_on_three_questions(tmp_path: Path, base_config: dict[str, Any], shared_data: Path) -> None:
    from bench.bench_retrieval import MODES, bench_retrieval
    from services.config import load_config

    config = load_config({**base_config, "cache_dir": str(Path.home() / ".cache" / "ragyard")})
    table = bench_retrieval(config, [str(shared_data / "dev_hotpotqa.jsonl")], tmp_path, ks=(1, 4), limit=3)
    result = json.loads((tmp_path / "retrieval.json").read_text())
    modes = result["files"]["dev_hotpotqa.jsonl"]["modes"]
    assert set(modes) == set(MODES) and all(m["questions"] == 3 for m in modes.values())
    for m in modes.values():
        recall = m["answer_recall"]
        assert 0.0 <= recall["1"] <= recall["4"] <= 1.0
    assert "hybrid" in table and (tmp_path / "retrieval.md").read_text() == table
