from __future__ import annotations

import pytest

from bench.harness import percentile, summarise
from core.scoring import f1, normalize_answer, score, yes_no

pytestmark = pytest.mark.unit


def test_normalisation_is_squad_style() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"


def test_em_and_f1_take_the_best_gold_answer() -> None:
    em, f, _ = score("Greenwich Village", ["Greenwich Village, New York City", "Greenwich Village"])
    assert em == 1.0 and f == 1.0
    em, f, _ = score("New York City", ["Greenwich Village, New York City"])
    assert em == 0.0
    assert f == pytest.approx(2 * (3 / 3) * (3 / 5) / (1 + 3 / 5))


def test_yes_no_questions_score_the_first_yes_or_no() -> None:
    assert yes_no("No, they are not.") == "no"
    assert yes_no("I think so") == ""
    assert score("Yes, both are American.", ["yes"])[:2] == (1.0, 1.0)
    assert score("No, the answer is yes", ["yes"])[:2] == (0.0, 0.0)
    assert score("Perhaps", ["no"])[:2] == (0.0, 0.0)


def test_f1_yes_no_must_match_exactly() -> None:
    assert f1("yes it is", "yes") == 0.0


def test_summary_fields() -> None:
    preds = [
        {
            "em": 1.0,
            "f1": 1.0,
            "latency_s": 1.0,
            "retrieval_steps": 1,
            "llm_calls": 1,
            "prompt_tokens": 10,
            "completion_tokens": 2,
        },
        {
            "em": 0.0,
            "f1": 0.5,
            "latency_s": 3.0,
            "retrieval_steps": 0,
            "llm_calls": 1,
            "prompt_tokens": 20,
            "completion_tokens": 4,
        },
    ]
    m = summarise(preds, policy="single", data="x.jsonl")
    assert m["n"] == 2 and m["em"] == 0.5 and m["f1"] == 0.75
    assert m["p50_latency_s"] == 2.0 and m["mean_latency_s"] == 2.0
    assert m["retrieval_steps_mean"] == 0.5 and m["prompt_tokens_mean"] == 15
    assert percentile([1, 2, 3, 4, 5], 0.95) == pytest.approx(4.8)
