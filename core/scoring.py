"""SQuAD-style answer scoring: normalised exact match and token F1, best over the gold answers.
Yes/no questions compare the first yes or no in the prediction."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def is_yes_no(answers: list[str]) -> bool:
    return bool(answers) and all(normalize_answer(a) in ("yes", "no") for a in answers)


def yes_no(prediction: str) -> str:
    """The first 'yes' or 'no' in the prediction, or '' when it holds neither."""
    for token in normalize_answer(prediction).split():
        if token in ("yes", "no"):
            return token
    return ""


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    # SQuAD's rule: yes/no/noanswer only match exactly.
    if (set(pred) & {"yes", "no", "noanswer"} or set(ref) & {"yes", "no", "noanswer"}) and pred != ref:
        return 0.0
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, answers: list[str]) -> tuple[float, float, str]:
    """(EM, F1, the prediction as scored)."""
    scored = yes_no(prediction) if is_yes_no(answers) else prediction
    em = max((exact_match(scored, a) for a in answers), default=0.0)
    f = max((f1(scored, a) for a in answers), default=0.0)
    return em, f, scored
