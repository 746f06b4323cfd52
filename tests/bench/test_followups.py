"""The follow-up set (two-turn conversations): well formed, every key fact where its corpus holds it, the
reference answers right; and `bench followups` answering with each mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.bench_docsqa import judge
from bench.bench_followups import data_file, read_followups

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_the_set_is_large_enough_and_its_facts_are_in_its_corpus() -> None:
    rows = read_followups()
    assert len(rows) >= 40 and len({r["id"] for r in rows}) == len(rows)
    docs = (ROOT / "README.md").read_text().lower() + "".join(
        p.read_text().lower() for p in sorted((ROOT / "docs").glob("*.md"))
    )
    corpora = {"docs": docs}
    for r in rows:
        if r["corpus"] not in corpora:
            lines = data_file(r["corpus"]).read_text().splitlines()
            corpora[r["corpus"]] = " ".join(
                f"{c['title']} {c['text']}" for line in lines for c in json.loads(line)["contexts"]
            ).lower()
        assert [m["role"] for m in r["history"]] == ["user", "assistant"], r["id"]
        for group in r["must_include"]:
            assert any(alt.lower() in corpora[r["corpus"]] for alt in group), (r["id"], group)
        assert judge(r["answers"][0], r["must_include"])[0], r["id"]  # the reference answer is right


@pytest.mark.integration
@pytest.mark.model
def test_bench_followups_answers_with_each_mode(tmp_path: Path, base_config: dict[str, Any]) -> None:
    from bench.bench_followups import bench_followups
    from services.config import load_config

    config = load_config({**base_config, "cache_dir": str(Path.home() / ".cache" / "ragyard")})
    table = bench_followups(config, tmp_path, modes=("off", "history"), limit=1, max_tokens=16)
    assert "| off |" in table and "| history |" in table
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    queries = {a["mode"]: a["query"] for a in answers}
    row = read_followups()[0]
    assert queries["off"] == row["question"]
    assert queries["history"].startswith(row["history"][0]["content"]) and queries["history"].endswith(row["question"])
    result = json.loads((tmp_path / "followups.json").read_text())
    assert set(result["modes"]) == {"off", "history"} and result["modes"]["off"]["questions"] == 1
