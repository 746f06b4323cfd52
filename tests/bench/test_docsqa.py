"""The docs-QA set about Ragyard itself: well formed, answerable from the bundled docs, judged by key facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.bench_docsqa import bench_docsqa, judge, read_docs_qa

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_set_is_large_enough_and_every_fact_is_in_the_bundled_docs() -> None:
    rows = read_docs_qa()
    assert len(rows) >= 100 and len({r["id"] for r in rows}) == len(rows)
    corpus = (ROOT / "README.md").read_text().lower() + "".join(
        p.read_text().lower() for p in sorted((ROOT / "docs").glob("*.md"))
    )
    for r in rows:
        for group in r["must_include"]:
            assert any(alt.lower() in corpus for alt in group), (r["id"], group)
        assert judge(r["answers"][0], r["must_include"])[0], r["id"]  # the reference answer is right


@pytest.mark.unit
def test_judge_needs_every_group() -> None:
    must = [["make test"], ["redis", "redis-server"]]
    assert judge("Run MAKE TEST; it installs redis-server.", must) == (True, [])
    assert judge("Run make test.", must) == (False, [["redis", "redis-server"]])


@pytest.mark.integration
@pytest.mark.model
def test_bench_docsqa_answers_and_scores(tmp_path: Path, base_config: dict[str, Any]) -> None:
    from services.config import load_config

    config = load_config({**base_config, "cache_dir": str(Path.home() / ".cache" / "ragyard")})
    table = bench_docsqa(config, tmp_path, limit=2, max_tokens=24)
    assert "| smollm2-135m-instruct |" in table and "/2 |" in table
    assert (tmp_path / "docsqa.json").exists() and len((tmp_path / "answers.jsonl").read_text().splitlines()) == 2
    import json

    summary = json.loads((tmp_path / "docsqa.json").read_text())["models"]["smollm2-135m-instruct"]
    # Every answer was checked against its passages, and the rate is of the sentences counted.
    assert 0.0 <= summary["unsupported_sentence_rate"] <= 1.0 and summary["median_support_ms"] is not None
