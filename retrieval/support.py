"""Whether each sentence of an answer is supported by the passages it was given.

A sentence is checked against every passage: the share of its content words the passage holds (lexical recall)
and, when an embedder is at hand, the cosine of their embeddings. It is supported by a passage that holds every
number it states and either most of its content words, or fewer of them in a passage whose embedding is close
(the answer's own words for the passage's facts). A sentence with fewer than two content words ("I do not know.")
states nothing to check and counts as supported. The check is cheap enough to run on every answer on a CPU: a
few regexes and one embedder batch of the sentences (the passages' vectors come with them).

Thresholds are set by reasoning, not fitted (no labelled support data ships in a package this project may use):
`ragyard bench docsqa` reports the share of sentences they call unsupported, so a change in them shows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Enough of a passage's content words to support a sentence on words alone, and the lower share that suffices
# when the embeddings agree.
LEXICAL_SUPPORT = 0.6
LEXICAL_WITH_EMBEDDING = 0.3
EMBEDDING_SUPPORT = 0.6
MAX_SENTENCES = 32  # an answer's sentences checked (a long answer's tail is reported unchecked)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9`])")
_WORD = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each either few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now
    of off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves one two yes""".split()
)


@dataclass(frozen=True)
class SentenceSupport:
    sentence: str
    supported: bool
    passage: int | None  # the passage (from 1, as the prompt numbers them) that supports it best
    lexical: float
    similarity: float | None


def sentences(text: str) -> list[str]:
    """The answer's sentences, in order (a line break ends one too)."""
    out: list[str] = []
    for line in text.splitlines():
        out += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return out


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def check(
    answer: str,
    passages: Sequence[str],
    sentence_vectors: np.ndarray | None = None,
    passage_vectors: np.ndarray | None = None,
) -> list[SentenceSupport]:
    """Each sentence of ``answer`` against ``passages``; the vectors (unit length, one row per sentence of
    `sentences(answer)` and per passage) add the embedding test."""
    found = sentences(answer)[:MAX_SENTENCES]
    words = [set(content_words(p)) for p in passages]
    numbers = [_numbers(p) for p in passages]
    sims = None
    if sentence_vectors is not None and passage_vectors is not None and len(passages):
        sims = np.asarray(sentence_vectors, dtype=np.float32) @ np.asarray(passage_vectors, dtype=np.float32).T
    out: list[SentenceSupport] = []
    for i, sentence in enumerate(found):
        own = content_words(sentence)
        if len(set(own)) < 2:
            out.append(SentenceSupport(sentence, True, None, 1.0, None))
            continue
        best: tuple[bool, float, float, int] | None = None
        for j in range(len(passages)):
            lexical = sum(w in words[j] for w in own) / len(own)
            similarity = float(sims[i, j]) if sims is not None else 0.0
            holds_numbers = _numbers(sentence) <= numbers[j]
            ok = holds_numbers and (
                lexical >= LEXICAL_SUPPORT
                or (sims is not None and lexical >= LEXICAL_WITH_EMBEDDING and similarity >= EMBEDDING_SUPPORT)
            )
            candidate = (ok, lexical + similarity, lexical, j)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
        if best is None:
            out.append(SentenceSupport(sentence, False, None, 0.0, None))
            continue
        ok, _, lexical, j = best
        cosine = round(float(sims[i, j]), 4) if sims is not None else None
        out.append(SentenceSupport(sentence, ok, j + 1, round(lexical, 4), cosine))
    return out
