"""Features of a question for the complexity classifier: the query embedding the retriever computes
anyway, plus cheap lexical cues of multi-hop and yes/no questions."""

from __future__ import annotations

import re

import numpy as np

_WH = ("who", "what", "when", "where", "which", "how", "why", "whose")
_AUX = ("is", "are", "was", "were", "do", "does", "did", "can", "has", "have", "will", "could", "should")
_COMPARE = (
    "both",
    "same",
    "older",
    "younger",
    "first",
    "earlier",
    "later",
    "larger",
    "more",
    "less",
    "longer",
    "shorter",
    "either",
    "also",
    "than",
)
_TOKEN = re.compile(r"[A-Za-z0-9']+")

LEXICAL_NAMES: tuple[str, ...] = (
    "log_words",
    "capitalised_ratio",
    "capitalised_count",
    "digits",
    "quotes",
    "commas",
    "and_count",
    "of_count",
    "compare_words",
    "starts_aux",
    "wh_first",
    "wh_anywhere",
    "question_mark",
)


def lexical_features(question: str) -> np.ndarray:
    words = _TOKEN.findall(question)
    lower = [w.lower() for w in words]
    n = max(1, len(words))
    caps = sum(1 for i, w in enumerate(words) if i > 0 and w[:1].isupper())
    first = lower[0] if lower else ""
    values = [
        np.log1p(len(words)),
        caps / n,
        float(caps),
        float(sum(ch.isdigit() for ch in question) > 0),
        float(question.count('"') + question.count("'") // 2),
        float(question.count(",")),
        float(lower.count("and")),
        float(lower.count("of")),
        float(sum(w in _COMPARE for w in lower)),
        float(first in _AUX),
        float(first in _WH),
        float(any(w in _WH for w in lower)),
        float(question.strip().endswith("?")),
    ]
    return np.asarray(values, dtype=np.float32)


def feature_vector(embedding: np.ndarray, question: str) -> np.ndarray:
    return np.concatenate([np.asarray(embedding, dtype=np.float32).ravel(), lexical_features(question)])
