"""Chunk KV computed at ingest: an ingest hands the new documents' chunks (as prompts show them) to every
worker whose engine computes chunk KV ahead, without waiting for it; the start-up warm-up hands the whole
stored corpus; a model without it, or configured off, gets nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.chunks import PromptChunk
from retrieval.documents import Document
from retrieval.prompts import passage_body
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = [pytest.mark.integration, pytest.mark.model]  # the real embedder


@dataclass
class RecordingEngine(ScriptedEngine):
    precomputed: list[list[PromptChunk]] = field(default_factory=list)

    def precompute(self, chunks: list[PromptChunk]) -> dict[str, Any]:
        self.precomputed.append(list(chunks))
        return {"queued": len(chunks), "enabled": True}


def _service(tmp_path: Path, embedder: Any, context: str = "passages", **model: Any) -> tuple[Any, RecordingEngine]:
    config = scripted_config(
        tmp_path / "index",
        models=[{"id": "smollm2-135m-instruct", "engine": "llamacpp", **model}],
        retrieval={"context": context},
    )
    engine = RecordingEngine()
    return scripted_service(config, embedder, engine), engine


def test_an_ingest_queues_its_chunks_and_does_not_wait(tmp_path: Path, embedder: Any) -> None:
    svc, engine = _service(tmp_path, embedder, chunk_cache={"enabled": True})
    docs = [
        Document(id="ferry", title="Ferry", text="The Brindle ferry leaves the north pier at nine every morning."),
        Document(id="quux", title="Quux", text="Zorblat is the capital of Quux."),
    ]

    async def run() -> dict[str, Any]:
        result = await svc.corpus.ingest(docs)
        assert engine.precomputed == []  # handed over in the background, after the answer
        for _ in range(100):
            if engine.precomputed:
                break
            await asyncio.sleep(0.02)
        return result

    result = asyncio.run(run())
    assert sorted(result["added"]) == ["ferry", "quux"]
    [texts] = engine.precomputed
    stored = [p for d in ("ferry", "quux") for p in svc.retriever.target.retriever.chunk_bodies([("shared", d)])]
    assert sorted(texts) == sorted(stored)
    ferry = "Ferry\nThe Brindle ferry leaves the north pier at nine every morning."
    assert PromptChunk(ferry, "shared") in texts
    # Unchanged documents queue nothing.
    asyncio.run(svc.corpus.ingest(docs[:1]))
    assert len(engine.precomputed) == 1


def test_warm_up_hands_the_whole_corpus(tmp_path: Path, embedder: Any) -> None:
    svc, engine = _service(tmp_path, embedder, chunk_cache={"enabled": True})
    svc.retriever.target.retriever.ingest([Document(id="a", title="A", text="Alpha is the first letter.")])
    out = asyncio.run(svc.corpus.warm_chunk_kv(attempts=1))
    assert out == {"smollm2-135m-instruct": {"queued": 1, "enabled": True}}
    chunk = next(iter(svc.retriever.target.retriever.store.chunks.values()))
    from retrieval.documents import Passage

    assert engine.precomputed == [[PromptChunk(passage_body(Passage(chunk=chunk, score=0.0)), "shared")]]


@pytest.mark.parametrize(
    "model", [{"chunk_cache": {"enabled": False}}, {"chunk_cache": {"enabled": True, "precompute": False}}]
)
def test_nothing_is_queued_when_the_model_does_not_ask(tmp_path: Path, embedder: Any, model: dict[str, Any]) -> None:
    svc, engine = _service(tmp_path, embedder, **model)
    assert svc.corpus.precompute_models() == []
    asyncio.run(svc.corpus.ingest([Document(id="b", title="B", text="Beta is the second letter.")]))
    assert asyncio.run(svc.corpus.warm_chunk_kv(attempts=1)) == {}
    assert engine.precomputed == []


def test_nothing_is_queued_when_prompts_hold_selected_sentences(tmp_path: Path, embedder: Any) -> None:
    """`retrieval.context: sentences` shows each question the lines it asks about, which no stored chunk matches:
    computing the corpus's chunk states would be work nothing reads."""
    svc, engine = _service(tmp_path, embedder, context="sentences", chunk_cache={"enabled": True})
    assert svc.corpus.precompute_models() == []
    asyncio.run(svc.corpus.ingest([Document(id="quux", title="Quux", text="Zorblat is the capital of Quux.")]))
    assert asyncio.run(svc.corpus.warm_chunk_kv(attempts=1, delay_s=0)) == {}
    assert engine.precomputed == []
