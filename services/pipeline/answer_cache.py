"""The response cache on the answer path: the exact entry for a request, else (``cache.semantic``) the entry of
an earlier question of the same scope close enough in meaning (`cache.semantic_cache`); either is served only
while the documents it was built from are unchanged.

An entry records the (namespace, id, fingerprint) of its sources and the corpus generation it saw. A scope is
everything in the key but the question (the readable namespaces, the plan, the history, the output-shaping
parameters), so a semantic match never crosses tenants, plans or conversations; questions with history are
matched exactly only (their meaning leans on the turns before).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cache.response_cache import ResponseCache
from cache.semantic_cache import SemanticIndex, SemanticMatch
from retrieval.documents import Passage
from retrieval.generation import SamplingParams
from router.plan import RouteDecision
from services.config import AppConfig
from services.pipeline.clients import RetrieverClient
from services.pipeline.records import Answer, AnswerRequest

logger = logging.getLogger(__name__)


@dataclass
class CacheLookup:
    """What the cache said of one request, and what storing its answer needs."""

    key: str | None  # None: the cache was not asked (bypass)
    verdict: str = "bypass"  # hit, semantic, miss, stale, bypass
    answer: dict[str, Any] | None = None  # the stored answer, when served
    generation: int = 0  # the corpus generation before answering
    scope: str | None = None
    vector: np.ndarray | None = None  # the question's embedding, when the semantic layer computed it
    match: SemanticMatch | None = None


def shaping_key(params: SamplingParams) -> dict[str, Any]:
    """The output-shaping params in a response-cache key (absent when unset, so older keys still hit)."""
    out: dict[str, Any] = {}
    if params.penalised:
        out["penalties"] = [params.frequency_penalty, params.presence_penalty]
    if params.response_format is not None:
        out["response_format"] = params.response_format.model_dump()
    return out


class AnswerCache:
    def __init__(self, config: AppConfig, cache: ResponseCache | None, retriever: RetrieverClient) -> None:
        self.cache = cache
        self.retriever = retriever
        c = config.cache
        self.semantic = (
            SemanticIndex(c.semantic_threshold, c.semantic_entries, guard=c.semantic_guard)
            if cache is not None and c.semantic
            else None
        )

    @staticmethod
    def _parts(req: AnswerRequest, decision: RouteDecision, params: SamplingParams) -> dict[str, Any]:
        q = req.question
        return dict(
            question=q.text,
            history=[m.model_dump() for m in q.history],
            system=q.system,
            style=q.style,
            # The classifier's output is not part of the key: it varies run to run (its timing) and only
            # matters through the policy it picked, which is.
            plan=decision.plan.model_dump(exclude={"complexity"}),
            stop=list(params.stop),
            **shaping_key(params),
            # No corpus generation: an entry records its sources and is checked against them (`current`).
            # What the asker may read decides what it is told: one tenant's answer is never another's.
            namespaces=sorted(req.namespaces) if req.namespaces is not None else None,
        )

    async def lookup(self, req: AnswerRequest, decision: RouteDecision, params: SamplingParams) -> CacheLookup:
        if self.cache is None or not decision.plan.use_response_cache:
            return CacheLookup(key=None)
        parts = self._parts(req, decision, params)
        key = ResponseCache.key(**parts)
        found = CacheLookup(key=key, verdict="miss")
        # The generation before answering: an entry says it saw at least this much of the corpus.
        found.generation = (await self.retriever.stats(req.min_generation)).get("generation", 0)
        found.answer, found.verdict = await self.current(key, req)
        if found.answer is not None or found.verdict != "miss" or self.semantic is None or req.question.history:
            return found
        found.scope = ResponseCache.key(**{k: v for k, v in parts.items() if k != "question"})
        try:
            found.vector = np.asarray(await self.retriever.embed(req.question.text), np.float32)
        except Exception as exc:  # noqa: BLE001 - no embedder, no semantic lookup: answered afresh
            logger.warning("semantic cache lookup skipped: %s", exc)
            return found
        match = self.semantic.lookup(found.scope, found.vector, req.question.text)
        if match is not None:
            answer, _ = await self.current(match.key, req)
            if answer is not None:
                found.answer, found.verdict, found.match = answer, "semantic", match
            else:  # its entry is gone or stale: the question no longer points anywhere
                self.semantic.forget(found.scope, match.key)
        return found

    async def current(self, key: str, req: AnswerRequest) -> tuple[dict[str, Any] | None, str]:
        """The entry's answer while it is current, and the verdict: "hit", "miss", or "stale" (an entry built
        before a write the asker needs to see, or from a document that has changed or gone since; dropped)."""
        assert self.cache is not None
        entry = await self.cache.get(key)
        if entry is None:
            return None, "miss"
        sources, answer = entry.get("sources"), entry.get("answer")
        if not isinstance(sources, list) or not isinstance(answer, dict):
            await self.cache.remove(key, "corrupt")
            return None, "miss"
        if req.min_generation > int(entry.get("generation", 0)):
            return None, "stale"  # not dropped: it is current for an asker who needs less
        if sources:
            keys = [(str(ns), str(doc_id)) for ns, doc_id, _ in sources]
            now = await self.retriever.fingerprints(keys, req.min_generation)
            if any(fp != source[2] for fp, source in zip(now, sources, strict=True)):
                await self.cache.remove(key)
                return None, "stale"
        return answer, "hit"

    @staticmethod
    def served(found: CacheLookup, started: float, decision: RouteDecision) -> Answer | None:
        """The cached answer as this request's record; None (a miss) for an entry this version cannot read."""
        assert found.answer is not None
        try:
            stored = Answer.model_validate(found.answer)
        except ValueError:
            logger.warning("response cache entry not readable as an answer: ignored")
            return None
        match = found.match
        semantic = {"question": match.question, "similarity": match.similarity} if match is not None else None
        return stored.served_from_cache(decision, started, "semantic" if semantic else "hit", semantic)

    async def store(self, found: CacheLookup, req: AnswerRequest, record: Answer, passages: list[Passage]) -> None:
        """Keep a whole answer under its key, with its sources; the semantic layer learns its question."""
        if found.key is None or self.cache is None:
            return
        sources = sorted({(p.chunk.namespace, p.chunk.doc_id, p.chunk.fingerprint) for p in passages})
        await self.cache.put(found.key, {"answer": record.cached(), "sources": sources, "generation": found.generation})
        if self.semantic is not None and found.scope is not None and found.vector is not None:
            self.semantic.add(found.scope, found.vector, req.question.text, found.key)
