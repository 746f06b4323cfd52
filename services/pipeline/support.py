"""The support check of an answer, run by the pipeline after the answer: its sentences against its passages
(`retrieval.support`), words first, the embedder only where words do not suffice."""

from __future__ import annotations

import logging
import time

import numpy as np

from retrieval.documents import Passage
from retrieval.prompts import passage_body
from retrieval.support import check
from services.pipeline.clients import RetrieverClient
from services.pipeline.records import SentenceCheck, SupportRecord

logger = logging.getLogger(__name__)


async def check_support(retriever: RetrieverClient, answer: str, passages: list[Passage]) -> SupportRecord | None:
    """Each sentence of the answer against the passages. Words first; the embedder only when a sentence is not
    supported by words alone, and then only for the sentences (the passages' vectors are the index's own). None
    when the retriever cannot be reached: the answer is not held back for its check."""
    started = time.perf_counter()
    bodies = [passage_body(p) for p in passages]
    checks = check(answer, bodies)
    if any(not c.supported for c in checks):
        found = [c.sentence for c in checks]
        keys = [(p.chunk.namespace, p.chunk.doc_id, p.chunk.chunk_index) for p in passages]
        try:
            sentence_vectors, stored = await retriever.support_vectors(found, keys)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run leaves the answer unchecked
            logger.warning("support check skipped: %s", exc)
            return None
        if all(v is not None for v in stored):
            checks = check(answer, bodies, np.asarray(sentence_vectors, np.float32), np.asarray(stored, np.float32))
    return SupportRecord(
        sentences=[
            SentenceCheck(
                text=c.sentence, supported=c.supported, passage=c.passage, lexical=c.lexical, similarity=c.similarity
            )
            for c in checks
        ],
        unsupported=sum(not c.supported for c in checks),
        seconds=round(time.perf_counter() - started, 4),
    )
