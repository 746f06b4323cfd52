"""Two ways a small model's answer fails that can be seen without a reference (issue: right answers, not
restated questions): it restates the question as its answer ("Which X does Y?" → "The X does Y."), or it names
an identifier that is in no passage and not in the question (a make target, an environment variable, a route
that does not exist). `ragyard bench docsqa` reports both rates; the answer pipeline can read them as signals.

Hand-written: a few lines over word sets and one pattern for identifiers; no library defines these checks."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    """a an the is are was were be been being do does did what which who whom whose how when where why of in on
    at to for by with from can could would should will shall may might must i me my you your we our it its they
    them their this that these those there here and or but not no yes so as if then than into onto about over
    under any all some each every one use used using set sets get gets run runs also only just more most very
    please tell say says said answer question passages passage based information provided""".split()
)
# Identifiers a reader could copy: `backticked` spans, words joined by _ . / : - (make targets, settings, routes,
# files), and SHOUTING_CASE names (environment variables).
_IDENT = re.compile(
    r"`([^`\n]{2,60})`"  # backticked
    r"|(?<![\w/.-])((?:/|[A-Za-z])[\w-]*(?:[_./:][\w-]+)+/?)"  # joined by _ . / :
    r"|\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b"  # SHOUTING_CASE
)

RESTATEMENT_SHARE = 0.75  # of the answer's content words found in the question
_NUMBER = re.compile(r"\b\d[\d.,:]*\b")
# An answer that says the passages do not hold it: for a cascade, a reason to ask the stronger model.
_ABSTAINS = re.compile(
    r"\b(do not know|don't know|not (?:mentioned|provided|specified|stated|given)|no information|"
    r"cannot (?:find|answer|determine|be determined)|"
    r"(?:do|does) not (?:say|mention|specify|provide|contain|include))\b",
    re.IGNORECASE,
)


@functools.cache
def _stemmer() -> Any:
    import Stemmer  # PyStemmer, which the BM25 index uses too

    return Stemmer.Stemmer("english")


def content_words(text: str) -> list[str]:
    """The words that carry content, stemmed ("maintains" and "maintained" are one word)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1]
    return list(_stemmer().stemWords(words))


def restates(question: str, answer: str) -> bool:
    """Whether the answer's content words are mostly the question's and it adds no value of its own (a number, or
    an identifier the question does not hold: "gets HTTP 404" answers "which status?" in one new word)."""
    words = content_words(answer)
    if not words:
        return True  # an answer of stop words only says nothing either
    asked = set(content_words(question))
    if sum(w in asked for w in words) / len(words) < RESTATEMENT_SHARE:
        return False
    low = question.lower()
    new_values = [w for w in _NUMBER.findall(answer) if w not in low]
    new_values += [i for i in identifiers(answer) if i.lower() not in low]
    return not new_values


def identifiers(text: str) -> list[str]:
    found = []
    for m in _IDENT.finditer(text):
        ident = next(g for g in m.groups() if g)
        ident = ident.strip().rstrip(".,;:")
        abbreviation = re.fullmatch(r"(?:[a-z]{1,2}\.)+[a-z]{0,2}", ident.lower())  # e.g, i.e
        if len(ident) >= 3 and not ident.replace(".", "").isdigit() and not abbreviation:
            found.append(ident)
    return found


def invented_names(answer: str, question: str, passages: Iterable[str]) -> list[str]:
    """The identifiers in the answer that occur in no passage and not in the question (case-insensitive)."""
    known = (question + "\n" + "\n".join(passages)).lower()
    return [i for i in identifiers(answer) if i.lower() not in known]


def abstains(answer: str) -> bool:
    return bool(_ABSTAINS.search(answer))


@dataclass
class Confidence:
    """How sure an answer looks without a reference: the geometric-mean probability of its tokens, zeroed by
    a sign that it failed (``reasons``: restated, invented names, abstained, empty)."""

    score: float
    token_probability: float | None
    reasons: list[str] = field(default_factory=list)


_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def failure_reasons(question: str, answer: str, passages: list[str], *, yes_no_answers: bool = False) -> list[str]:
    """The signs that an answer failed: empty, restates the question, names what no passage holds, says the
    passages do not hold it. ``yes_no_answers``: a bare "Yes." or "No." counts as an answer, not as a
    restatement (the cascade keeps counting it, as it was calibrated)."""
    reasons = []
    if not answer.strip():
        reasons.append("empty")
    elif restates(question, answer) and not (yes_no_answers and _YES_NO.match(answer)):
        reasons.append("restates the question")
    invented = invented_names(answer, question, passages)
    if invented:
        reasons.append(f"names what no passage holds: {', '.join(invented[:3])}")
    if abstains(answer):
        reasons.append("says the passages do not hold it")
    return reasons


def confidence(question: str, answer: str, passages: list[str], token_logprobs: list[float] | None) -> Confidence:
    reasons = failure_reasons(question, answer, passages)
    prob = math.exp(sum(token_logprobs) / len(token_logprobs)) if token_logprobs else None
    score = 0.0 if reasons else (prob if prob is not None else 1.0)
    return Confidence(
        score=round(score, 4), token_probability=None if prob is None else round(prob, 4), reasons=reasons
    )
