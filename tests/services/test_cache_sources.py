"""Cached answers know their sources: an answer is served again while every document it was built from is
unchanged, and retired exactly when one of them changes or goes; writes elsewhere (another document, another
tenant's) leave it be."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cache.memory_backend import MemoryBackend
from cache.response_cache import ResponseCache
from retrieval.documents import Document
from retrieval.policies.base import Question
from services.pipeline import AnswerRequest
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

QUESTION = "Who maintains the Lim bridge over the river?"


def _ask(svc: Any, *, namespaces: list[str] | None = None, min_generation: int = 0) -> Any:
    req = AnswerRequest(
        question=Question(text=QUESTION), max_tokens=8, top_k=1, namespaces=namespaces, min_generation=min_generation
    )
    return asyncio.run(svc.answer(req))


def test_an_answer_is_retired_exactly_when_its_source_changes(tmp_path: Path, hashing_embedder: Any) -> None:
    config = scripted_config(tmp_path / "index")
    engine = ScriptedEngine("Quux maintains it.")
    svc = scripted_service(config, hashing_embedder, engine, cache=ResponseCache(MemoryBackend()))
    bridge = Document(id="bridge", title="Lim bridge", text="The Lim bridge over the river is maintained by Quux.")
    first = asyncio.run(svc.corpus.ingest([bridge]))
    answered = _ask(svc)
    assert answered.cache.response == "miss" and [c.document_id for c in answered.citations] == ["bridge"]
    assert _ask(svc).cache.response == "hit"
    calls = len(engine.prompts)

    # Another shared document, and another tenant's document of the same id: the answer's source is untouched.
    ferry = Document(id="ferry", title="Brindle ferry", text="The Brindle ferry leaves at nine.")
    asyncio.run(svc.corpus.ingest([ferry]))
    theirs = Document(id="bridge", title="Lim bridge", text="Globex says Zed maintains it.", namespace="globex")
    asyncio.run(svc.corpus.ingest([theirs]))
    assert _ask(svc).cache.response == "hit" and len(engine.prompts) == calls

    # The same document uploaded again unchanged is no change either.
    asyncio.run(svc.corpus.ingest([bridge]))
    assert _ask(svc).cache.response == "hit"

    # The source itself changes: the entry is retired and the question answered afresh, from the new text.
    moved = Document(id="bridge", title="Lim bridge", text="The Lim bridge over the river is maintained by Zorblat.")
    asyncio.run(svc.corpus.ingest([moved]))
    fresh = _ask(svc)
    assert fresh.cache.response == "stale" and len(engine.prompts) == calls + 1
    assert "Zorblat" in fresh.citations[0].text
    assert _ask(svc).cache.response == "hit"

    # The source goes: retired again.
    asyncio.run(svc.retriever.remove("bridge", "shared"))
    assert _ask(svc).cache.response == "stale"
    assert first["generation"] >= 1


def test_an_asker_who_needs_a_later_write_is_not_served_an_older_answer(tmp_path: Path, hashing_embedder: Any) -> None:
    config = scripted_config(tmp_path / "index")
    engine = ScriptedEngine("Quux maintains it.")
    svc = scripted_service(config, hashing_embedder, engine, cache=ResponseCache(MemoryBackend()))
    asyncio.run(svc.corpus.ingest([Document(id="bridge", text="The Lim bridge is maintained by Quux.")]))
    assert _ask(svc).cache.response == "miss"
    later = asyncio.run(svc.corpus.ingest([Document(id="ferry", text="The Brindle ferry leaves at nine.")]))
    # An asker who wrote (and sends the generation its write returned) gets an answer that has seen the write;
    # the entry stays for everyone else.
    assert _ask(svc, min_generation=later["generation"]).cache.response == "stale"
    assert _ask(svc).cache.response == "hit"
