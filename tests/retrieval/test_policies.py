from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from retrieval.errors import UnknownPolicyError
from retrieval.policies.base import Question
from retrieval.policies.registry import available_policies, get_policy
from services.rag import AnswerRequest

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_registry_lists_and_refuses() -> None:
    assert available_policies() == ["none", "single"]
    assert get_policy("single").name == "single"
    with pytest.raises(UnknownPolicyError, match="valid: none, single"):
        get_policy("nope")


@pytest.mark.parametrize("policy", ["none", "single"])
def test_each_policy_end_to_end_on_real_questions(policy: str, shared_data: Path, local_service: Any) -> None:
    rows = [json.loads(line) for line in (shared_data / "dev_hotpotqa.jsonl").read_text().splitlines()[:2]]
    asyncio.run(local_service.ingest([d for r in rows for d in _contexts(r)]))
    for row in rows:
        rec = asyncio.run(
            local_service.answer(
                AnswerRequest(question=Question(text=row["question"], style="short"), policy=policy, max_tokens=16)
            )
        )
        assert rec["answer"]
        assert rec["plan"]["policy"] == policy
        steps = [s["step"] for s in rec["trace"]]
        if policy == "none":
            assert rec["citations"] == [] and rec["retrieval_steps"] == 0 and steps == ["generate"]
        else:
            assert rec["retrieval_steps"] == 1 and steps == ["retrieve", "generate"]
            titles = {c["title"] for c in rec["citations"]}
            assert titles & {c["title"] for c in row["contexts"]}
            assert all({"document_id", "title", "chunk", "score"} <= set(c) for c in rec["citations"])
        assert set(rec["timings"]) >= {"retrieve_s", "prefill_s", "decode_s", "total_s"}


def _contexts(row: dict[str, Any]) -> list[Any]:
    from retrieval.documents import Document

    return [Document(title=c["title"], text=c["text"]) for c in row["contexts"]]
