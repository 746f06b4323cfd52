"""The passages' sentences quoted under an answer (issue: right answers, not restated questions). A small model often
answers a question about the docs with the question itself ("Which benchmark measures X?" → "The benchmark
measures X."), a name no passage holds, a neighbouring command or value, or a sentence the support check finds in
no passage; the fact it missed is usually in the sentence of the passages that bears most on the question. So the
passages' best sentences (whole sentences, a table row under its header, a line of code; ranked by the question's
words and the embedder) are quoted under the answer with their passages' numbers: under every chat answer over
passages (`retrieval.evidence_when: always`, the default) or only under one that fails a check (`failed`). The
model's own words stay as they were, and the reader sees what the passages say beside them.

Measured on the docs-QA dev set (README: "Quoted from the passages"): Qwen2.5-Coder-0.5B's own words are right for
42 of 100 questions; with its two best sentences quoted under every answer the reply holds every key fact for 72
(51 with one line under the answers that failed a check).
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
from retrieval.policies.base import Quote, Step
from retrieval.prompts import passage_body
from retrieval.screening import screen
from retrieval.selection import best_lines, line_units, unit_text

logger = logging.getLogger(__name__)

LABEL = "From the passages"
# A quote is a whole sentence (markdown's hard wraps rejoined), not the stretch of one a line holds: read by a
# person, and on the docs-QA dev set the best two sentences held every key fact of more questions than the best two
# lines (README: "Quoted from the passages").
WHOLE_SENTENCES = True

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
    quotes: list[Quote]
    reasons: list[str]  # the checks the answer failed (none: quoted because every answer is)
    method: str = "words"  # how the sentences were ranked: words, or words+embedder
    seconds: float = 0.0  # the ranking's time (the embedder's round trip, when there is one)

    def step(self) -> Step:
        return {
            "step": "evidence",
            "quotes": list(self.quotes),
            "reasons": self.reasons,
            "method": self.method,
            "seconds": round(self.seconds, 4),
        }


def note(quotes: list[Quote]) -> str:
    """What follows the answer: a blank line, the label, then each quote on its own line after its passage's
    number."""
    return f"\n\n{LABEL}:" + "".join(f"\n[{q['passage']}] {q['text']}" for q in quotes)


def own_words(answer: str) -> str:
    """The model's own words of an answer: the text before the quotes' note, if one was added."""
    head, sep, _ = answer.rpartition(f"\n\n{LABEL}:\n[")
    return head if sep else answer


async def closest_line(
    question: str,
    answer: str,
    passages: list[Passage],
    *,
    unsupported: int = 0,
    context: str | None = None,
    embed: Embed | None = None,
    always: bool = False,
    count: int = 1,
) -> Evidence | None:
    """The note to add under ``answer``: the passages' ``count`` whole sentences (a table row, a line of code) that
    bear most on the question, best first; None when the answer passes every check and not ``always``, when no
    passage sentence bears on the question, or when the answer holds every one already. ``unsupported``: the
    sentences the support check found in no passage. A passage the injection screen flags is never quoted.
    ``embed``: the sentences are ranked by their embeddings' similarity to the question's as well as by its words
    (`retrieval.selection.best_lines`); when it fails, words alone rank them."""
    if not passages:
        return None
    bodies = [passage_body(p) for p in passages]
    reasons = failure_reasons(question, answer, bodies, yes_no_answers=True)
    if unsupported:
        reasons.append(f"{unsupported} sentence(s) no passage supports")
    if not reasons and not always:
        return None
    safe = [n for n, body in enumerate(bodies) if not screen(body)]
    quotable = [passages[n] for n in safe]
    started = time.perf_counter()
    # The follow-up's own words choose its sentences (its history found the passages), as `HISTORY_WEIGHT` has it.
    similarity = await _similarity(question, quotable, embed) if embed is not None else None
    found = best_lines(
        question, quotable, count=count, context=context, similarity=similarity, whole_sentences=WHOLE_SENTENCES
    )
    quotes = [Quote(passage=safe[index] + 1, text=text) for index, text in found if text not in answer]
    if not quotes:
        return None
    return Evidence(
        note=note(quotes),
        quotes=quotes,
        reasons=reasons,
        method="words" if similarity is None else "words+embedder",
        seconds=time.perf_counter() - started,
    )


async def _similarity(query: str, passages: list[Passage], embed: Embed) -> list[float] | None:
    texts = [unit_text(u) for u in line_units(passages, whole_sentences=WHOLE_SENTENCES)]
    if not texts:
        return None
    try:
        vectors = np.asarray(await embed([query, *texts]), np.float32)
    except Exception as exc:  # noqa: BLE001 - the words still rank the lines
        logger.warning("closest line ranked by words alone: the embedder failed: %s", exc)
        return None
    return [float(x) for x in vectors[1:] @ vectors[0]]
