"""DRAGIN's two signals (arXiv 2403.10081), as pure functions over per-token numbers.

RIND (when to retrieve): token i of the completion scores
    entropy_i  x  max_{j > i} attention[j, i]  x  [token i is not a stopword]
where attention is the last layer's, averaged over heads, from later completion tokens to token i (1 for
the completion's last token, which nothing later attends to).
Retrieval triggers at the first token whose score passes the threshold.

QFS (what to retrieve): the query is the ``n`` context tokens (prompt and completion before the
trigger, stopwords and template tokens left out) that the trigger token attends to most, in their
original order.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

_WORD = re.compile(r"[A-Za-z0-9]")
_EDGE_PUNCT = "".join(sorted(set(string.punctuation)))


def is_content_token(token: str) -> bool:
    """A token that carries meaning: has a letter or digit, is not a stopword or template marker."""
    word = token.strip().lower()
    if not word or not _WORD.search(word) or word.startswith("<|"):
        return False
    return word not in ENGLISH_STOP_WORDS


@dataclass(frozen=True)
class Trigger:
    index: int  # position in the completion
    score: float
    token: str


def rind_scores(
    entropies: list[float], attention: np.ndarray | None, completion_tokens: list[str], prompt_len: int
) -> list[float]:
    """One score per completion token. Without attention (an engine that cannot expose it) the
    attention factor is 1: entropy alone decides."""
    n = len(entropies)
    scores: list[float] = []
    for i in range(n):
        if not is_content_token(completion_tokens[i]):
            scores.append(0.0)
            continue
        if attention is None:
            weight = 1.0
        else:
            later = attention[i + 1 : n, prompt_len + i]
            # The completion's last token has no later token to attend to it. A short answer ("Yes",
            # "Paris") is only that token, and scoring it 0 kept DRAGIN from ever retrieving for a model
            # that answers in one word (Qwen2.5-Coder-0.5B: 0 retrievals at any threshold): the answer's
            # own last token counts fully, by its entropy.
            weight = float(later.max()) if later.size else 1.0
        scores.append(float(entropies[i]) * weight)
    return scores


def first_trigger(scores: list[float], completion_tokens: list[str], threshold: float) -> Trigger | None:
    for i, s in enumerate(scores):
        if s > threshold:
            return Trigger(i, s, completion_tokens[i])
    return None


def qfs_query(attention_row: np.ndarray, tokens: list[str], upto: int, n: int, start: int = 0) -> str:
    """Top-``n`` content tokens among ``tokens[start:upto]`` by the trigger's attention, in text order.

    Sub-word pieces are joined back to the word they start or continue, so the query reads as words.
    """
    words = [(s + start, text, [p + start for p in pos]) for s, text, pos in _words(tokens[start:upto])]
    ranked = sorted(
        (
            (max(float(attention_row[p]) for p in positions), start, text)
            for start, text, positions in words
            if is_content_token(text)
        ),
        reverse=True,
    )[:n]
    return " ".join(text.strip().strip(_EDGE_PUNCT) for _, _, text in sorted(ranked, key=lambda r: r[1]))


def locate(tokens: list[str], text: str) -> int:
    """Index of the token where the last occurrence of ``text`` begins in the joined tokens (0 if absent)."""
    joined = "".join(tokens)
    offset = joined.rfind(text)
    if offset <= 0:
        return 0
    length = 0
    for i, tok in enumerate(tokens):
        if length + len(tok) > offset:
            return i
        length += len(tok)
    return 0


def _words(tokens: list[str]) -> list[tuple[int, str, list[int]]]:
    """Group token positions into words: a token that starts with whitespace, and a template marker,
    begin a new word; any other token continues the word before it."""
    out: list[tuple[int, str, list[int]]] = []
    for pos, tok in enumerate(tokens):
        if not out or tok[:1].isspace() or tok.startswith("<|") or out[-1][1].startswith("<|"):
            out.append((pos, tok, [pos]))
        else:
            start, text, positions = out[-1]
            out[-1] = (start, text + tok, [*positions, pos])
    return out
