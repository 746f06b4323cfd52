"""The semantic layer of the response cache on the answer path (`cache.semantic`): a reworded question is
served the earlier answer, its opposite, another tenant's and a follow-up's are not, and a changed source
retires both."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cache.memory_backend import MemoryBackend
from cache.response_cache import ResponseCache
from retrieval.documents import Document
from retrieval.generation import ChatMessage
from retrieval.policies.base import Question
from services.pipeline import AnswerRequest
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

QUESTION = "Who maintains the Lim bridge over the river?"


def _ask_text(svc: Any, text: str, namespaces: list[str] | None = None) -> Any:
    req = AnswerRequest(question=Question(text=text), max_tokens=8, top_k=1, namespaces=namespaces)
    return asyncio.run(svc.answer(req))


def test_a_reworded_question_is_served_from_the_semantic_cache_and_its_opposite_is_not(
    tmp_path: Path, embedder: Any
) -> None:
    config = scripted_config(tmp_path / "index", cache={"semantic": True, "semantic_threshold": 0.85})
    engine = ScriptedEngine("Quux maintains it.")
    svc = scripted_service(config, embedder, engine, cache=ResponseCache(MemoryBackend()))
    bridge = Document(id="bridge", title="Lim bridge", text="The Lim bridge over the river is maintained by Quux.")
    asyncio.run(svc.corpus.ingest([bridge]))
    first = _ask_text(svc, QUESTION)
    assert first.cache.response == "miss" and first.answer.startswith("Quux maintains it.")
    calls = len(engine.prompts)

    again = _ask_text(svc, "Who is it that maintains the Lim bridge over the river?")
    assert again.cache.response == "semantic" and len(engine.prompts) == calls
    assert again.cache.semantic is not None and again.cache.semantic["question"] == QUESTION
    assert again.cache.semantic["similarity"] >= 0.85 and again.answer == first.answer  # the stored answer, as it was
    assert again.model_dump(mode="json")["cache"]["semantic"]["question"] == QUESTION

    # Close in cosine, opposite in meaning: answered afresh. Another tenant's scope: never matched.
    assert _ask_text(svc, "Who does not maintain the Lim bridge over the river?").cache.response == "miss"
    assert _ask_text(svc, "Who is it that maintains the Lim bridge over the river?", ["globex"]).cache.response == (
        "miss"
    )
    # A question with history is matched exactly or not at all.
    followup = AnswerRequest(
        question=Question(
            text="Who is it that maintains the Lim bridge over the river?",
            history=[ChatMessage(role="user", content="Tell me about bridges.")],
        ),
        max_tokens=8,
        top_k=1,
    )
    assert asyncio.run(svc.answer(followup)).cache.response == "miss"

    # The source changes: the earlier entry is stale, so the reworded question is answered afresh too.
    calls = len(engine.prompts)
    moved = Document(id="bridge", title="Lim bridge", text="The Lim bridge over the river is maintained by Zorblat.")
    asyncio.run(svc.corpus.ingest([moved]))
    fresh = _ask_text(svc, "Who is the maintainer of the Lim bridge over the river?")
    assert fresh.cache.response == "miss" and len(engine.prompts) == calls + 1
    assert _ask_text(svc, "Who is it that maintains the Lim bridge over the river?").cache.response == "semantic"


@pytest.mark.unit
def test_the_semantic_cache_is_off_by_default(tmp_path: Path, hashing_embedder: Any) -> None:
    config = scripted_config(tmp_path / "index")
    svc = scripted_service(config, hashing_embedder, ScriptedEngine("Quux."), cache=ResponseCache(MemoryBackend()))
    assert svc.answers.semantic is None and config.cache.semantic is False
