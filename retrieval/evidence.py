"""The passages' closest line under an answer that cannot be checked against them (issue: right answers, not
restated questions). A small model often answers a question about the docs with the question itself ("Which
benchmark measures X?" → "The benchmark measures X."), a name no passage holds, or a sentence the support check
finds in no passage; the fact it missed is usually in the line of the passages that bears most on the question.
When the answer shows one of those signs, that line is added under it, quoted with its passage's number, so the
reader sees what the passages say instead of a restatement. The model's own words stay as they were; nothing is
added to an answer that passes every check.

Measured on the docs-QA dev set (README: "The passages' closest line"): about 4 in 10 of Qwen2.5-Coder-0.5B's
answers got the line, most of them wrong in the model's own words, and 10 of the 100 answers were right with it
and not without (37 → 47 right).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from cachetools import LRUCache

from retrieval.documents import Passage
from retrieval.grounding import failure_reasons
from retrieval.policies.base import Step
from retrieval.prompts import passage_body
from retrieval.screening import screen
from retrieval.selection import best_line, line_units, unit_text

logger = logging.getLogger(__name__)

LABEL = "Closest line in the passages"

# Texts to vectors (the retriever's embedder, unit-normalised, a row per text): the query first, then each line.
Embed = Callable[[list[str]], Awaitable[np.ndarray]]


class LineVectors:
    """An `Embed` that remembers the lines' vectors (the same chunks come back question after question, and a
    line's vector never changes): one embedder call for the query and the lines it has not seen, or none
    beyond the query's. Bounded: ``max_lines`` vectors of 384 float32s (8192: about 12 MB)."""

    def __init__(self, embed: Embed, max_lines: int = 8192) -> None:
        self._embed = embed
        self._seen: LRUCache[str, np.ndarray] = LRUCache(maxsize=max_lines)
        self.lines_embedded = 0  # lines sent to the embedder so far (the rest came from memory)

    async def __call__(self, texts: list[str]) -> np.ndarray:
        query, lines = texts[0], texts[1:]
        known = {t: self._seen[t] for t in lines if t in self._seen}  # before new ones may evict them
        missing = [t for t in dict.fromkeys(lines) if t not in known]
        fresh = np.asarray(await self._embed([query, *missing]), np.float32)
        known.update(zip(missing, fresh[1:], strict=True))
        self._seen.update(zip(missing, fresh[1:], strict=True))
        self.lines_embedded += len(missing)
        return np.vstack([fresh[0], *(known[t] for t in lines)])


@dataclass
class Evidence:
    note: str  # what follows the answer, from its first blank line
    passage: int  # 1-based, numbered as the citations are
    line: str
    reasons: list[str]
    method: str = "words"  # how the lines were ranked: words, or words+embedder
    seconds: float = 0.0  # the ranking's time (the embedder's round trip, when there is one)

    def step(self) -> Step:
        return {
            "step": "evidence",
            "passage": self.passage,
            "line": self.line,
            "reasons": self.reasons,
            "method": self.method,
            "seconds": round(self.seconds, 4),
        }


async def closest_line(
    question: str,
    answer: str,
    passages: list[Passage],
    *,
    unsupported: int = 0,
    context: str | None = None,
    embed: Embed | None = None,
) -> Evidence | None:
    """The note to add under ``answer``, or None when it passes every check (or no passage line bears on the
    question, or the line is in the answer already). ``unsupported``: the sentences the support check found in
    no passage. A passage the injection screen flags is never quoted. ``embed``: the lines are ranked by their
    embeddings' similarity to the question's as well as by its words (`retrieval.selection.best_line`); called
    only for an answer that gets a line, and when it fails, words alone rank them."""
    if not passages:
        return None
    bodies = [passage_body(p) for p in passages]
    reasons = failure_reasons(question, answer, bodies, yes_no_answers=True)
    if unsupported:
        reasons.append(f"{unsupported} sentence(s) no passage supports")
    if not reasons:
        return None
    safe = [n for n, body in enumerate(bodies) if not screen(body)]
    quotable = [passages[n] for n in safe]
    started = time.perf_counter()
    # The follow-up's own words choose its line (its history found the passages), as `HISTORY_WEIGHT` has it.
    similarity = await _similarity(question, quotable, embed) if embed is not None else None
    found = best_line(question, quotable, context=context, similarity=similarity)
    if found is None:
        return None
    index, line = found
    if line in answer:
        return None
    number = safe[index] + 1
    return Evidence(
        note=f"\n\n{LABEL} [{number}]: {line}",
        passage=number,
        line=line,
        reasons=reasons,
        method="words" if similarity is None else "words+embedder",
        seconds=time.perf_counter() - started,
    )


async def _similarity(query: str, passages: list[Passage], embed: Embed) -> list[float] | None:
    texts = [unit_text(u) for u in line_units(passages)]
    if not texts:
        return None
    try:
        vectors = np.asarray(await embed([query, *texts]), np.float32)
    except Exception as exc:  # noqa: BLE001 - the words still rank the lines
        logger.warning("closest line ranked by words alone: the embedder failed: %s", exc)
        return None
    return [float(x) for x in vectors[1:] @ vectors[0]]
