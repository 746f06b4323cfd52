"""`ragyard bench cache`'s parts: pairs by nearest neighbour labelled by shared answers, the threshold sweep,
the meaning flips (each caught by the guard) and the replay stream's composition."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bench.bench_cache import Pair, _stream, flips, near_pairs, sweep
from cache.semantic_cache import conflict

pytestmark = pytest.mark.unit


def _unit(*rows: list[float]) -> np.ndarray:
    v = np.asarray(rows, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_near_pairs_are_nearest_neighbours_labelled_by_a_shared_answer() -> None:
    rows = [
        ("who wrote hamlet", ["Shakespeare"]),
        ("who was the author of hamlet", ["William Shakespeare", "shakespeare"]),
        ("when was hamlet written", ["1600"]),
        ("When was Hamlet written?", ["1601"]),  # the same text once normalised: an exact hit, not a pair
        ("what is the capital of peru", ["Lima"]),
    ]
    vectors = _unit([1, 0.1, 0], [1, 0.15, 0], [0.2, 1, 0], [0.2, 1, 0.01], [0, 0, 1])
    pairs = near_pairs(rows, vectors)
    assert [(p.a, p.b, p.same) for p in pairs] == [("who wrote hamlet", "who was the author of hamlet", True)]
    assert pairs[0].conflict is None and pairs[0].cosine > 0.99


def test_the_sweep_counts_what_the_guard_lets_through() -> None:
    pairs = [
        Pair("a", "b", 0.99, True, None),
        Pair("c", "d", 0.99, False, None),
        Pair("e", "f", 0.97, False, "negation"),
        Pair("g", "h", 0.9, True, None),
    ]
    by = {r["threshold"]: r for r in sweep(pairs, wrong_cost=2.0)}
    assert by[0.97] == {
        "threshold": 0.97,
        "pairs_above": 3,
        "hits": 2,
        "right": 1,
        "wrong": 1,
        "precision": 0.5,
        "precision_unguarded": 0.333,
        "net": -1.0,
    }
    assert by[0.9]["right"] == 2 and by[0.9]["net"] == 0.0


@pytest.mark.parametrize(
    "question",
    [
        "who is the president of the united states in 2010",
        "when did the first world war start",
        "how many players are on a rugby team",
        "what is the largest city in canada",
    ],
)
def test_every_meaning_flip_is_caught_by_the_guard(question: str) -> None:
    flipped = flips(question, random.Random(0))
    assert flipped, question
    for kind, text in flipped:
        assert text != question and conflict(question, text) is not None, (kind, text)


def test_the_replay_stream_asks_each_first_question_before_its_variants() -> None:
    same = [Pair(f"q{i}", f"q{i} reworded", 0.97, True, None) for i in range(4)]
    different = [Pair(f"d{i}", f"d{i} other", 0.97, False, None) for i in range(4)]
    flipped = [{"kind": "negation", "original": f"is f{i} red", "flipped": f"is f{i} not red"} for i in range(4)]
    stream = _stream(same + different, flipped, random.Random(0), per_kind=3)
    kinds = [s["kind"] for s in stream]
    assert kinds[:9] == ["first"] * 9 and "first" not in kinds[9:]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "first": 9,
        "repeat": 3,
        "surface": 3,
        "paraphrase": 3,
        "different": 3,
        "flip_negation": 3,
    }
    assert all(s["wrong_if_matched"] for s in stream if s["kind"] in {"different", "flip_negation"})
