from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from router.labels import bias_label, collect, split_rows

pytestmark = pytest.mark.unit

ROWS = [
    {"id": "easy", "question": "Capital of France?", "answers": ["Paris"], "hops": 1},
    {"id": "lookup", "question": "Who founded Quux?", "answers": ["Zorblat"], "hops": 1},
    {"id": "hard", "question": "Which came first, A or B?", "answers": ["A"], "hops": 2},
    {"id": "lost1", "question": "Unanswerable single?", "answers": ["x"], "hops": 1},
    {"id": "lost2", "question": "Unanswerable multi?", "answers": ["y"], "hops": 2},
]
# What each policy answers for each question (the fixture's "model").
ANSWERS = {
    ("easy", "none"): "Paris",
    ("lookup", "none"): "I don't know",
    ("lookup", "single"): "Zorblat",
    ("hard", "none"): "B",
    ("hard", "single"): "B",
    ("hard", "multi"): "A",
}


def _answer_fn(calls: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    by_q = {r["question"]: r["id"] for r in ROWS}

    async def answer(question: str, policy: str) -> str:
        calls.append((by_q[question], policy))
        return ANSWERS.get((by_q[question], policy), "wrong")

    return answer


def test_simplest_correct_policy_is_the_label_else_inductive_bias(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    out = tmp_path / "labels.jsonl"
    labelled = asyncio.run(collect(ROWS, _answer_fn(calls), out))
    assert [r["label"] for r in labelled] == ["A", "B", "C", "B", "C"]
    assert [r["source"] for r in labelled] == ["none", "single", "multi", "inductive bias", "inductive bias"]
    # The ladder stops at the first correct policy.
    assert ("easy", "single") not in calls and ("lookup", "multi") not in calls
    assert len(out.read_text().splitlines()) == 5

    again: list[tuple[str, str]] = []
    assert [r["label"] for r in asyncio.run(collect(ROWS, _answer_fn(again), out))] == ["A", "B", "C", "B", "C"]
    assert again == []  # resumed from the file
    assert json.loads(out.read_text().splitlines()[1])["tried"]["single"]["f1"] == 1.0


def test_bias_and_split() -> None:
    assert bias_label(1) == "B" and bias_label(2) == "C" and bias_label(None) == "B"
    rows = [{"id": str(i)} for i in range(10)]
    train, test = split_rows(rows, seed=0)
    assert len(train) == 5 and len(test) == 5 and not {r["id"] for r in train} & {r["id"] for r in test}
    assert split_rows(rows, seed=0) == (train, test)
    assert split_rows(rows, seed=1) != (train, test)
