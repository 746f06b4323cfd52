"""The semantic index and its guard: close questions match, near-duplicates that mean something else never do."""

from __future__ import annotations

import numpy as np
import pytest

from cache.semantic_cache import SemanticIndex, conflict

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ("Which ports are open?", "Which ports are not open?", "negation"),
        ("Why does the worker start?", "Why doesn't the worker start?", "negation"),
        ("Does it run without Redis?", "Does it run with Redis?", "negation"),
        ("who won the 1998 world cup", "who won the 2002 world cup", "number"),
        ("What happens after three retries?", "What happens after 4 retries?", "number"),
        ("what is the first step", "what is the second step", "number"),
        ("What does REDIS_URL set?", "What does RAY_ADDRESS set?", "name"),
        ("who wrote hamlet", "Who wrote Macbeth?", "name"),
        ("What is the largest planet?", "what is the smallest planet", "opposite"),
        ("How do I enable tracing?", "How do I disable tracing?", "opposite"),
        ("What runs before the answer?", "What runs after the answer?", "opposite"),
    ],
)
def test_the_guard_sets_apart_questions_that_mean_something_else(a: str, b: str, why: str) -> None:
    assert conflict(a, b) == why and conflict(b, a) == why


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("what port does ragyard listen on", "Which port does Ragyard listen on?"),
        ("How do I turn on tracing?", "how can i enable tracing"),
        ("Why doesn't the worker start?", "why does the worker not start"),
        ("Which one is the default model?", "Which model is the default?"),
        ("Who wrote Hamlet?", "who was the author of hamlet"),
    ],
)
def test_the_guard_lets_rewordings_through(a: str, b: str) -> None:
    assert conflict(a, b) is None


def _vec(*xs: float) -> np.ndarray:
    return np.asarray(xs, dtype=np.float32)


def test_a_match_needs_the_threshold_the_guard_and_the_same_scope() -> None:
    index = SemanticIndex(threshold=0.9)
    index.add("acme", _vec(1, 0, 0), "Which ports are open?", "k-open")
    assert index.lookup("acme", _vec(1, 0.1, 0), "What ports are open?") is not None
    hit = index.lookup("acme", _vec(1, 0.1, 0), "What ports are open?")
    assert hit is not None and hit.key == "k-open" and hit.question == "Which ports are open?"
    assert 0.99 < hit.similarity <= 1.0
    assert index.lookup("acme", _vec(1, 1, 0), "What ports are open?") is None  # cosine 0.71
    assert index.lookup("acme", _vec(1, 0, 0), "Which ports are not open?") is None  # the guard
    assert index.lookup("globex", _vec(1, 0, 0), "Which ports are open?") is None  # another scope
    # the guard skips the closest question for the next one it allows
    index.add("acme", _vec(1, 0.05, 0), "Which ports are not open?", "k-closed")
    found = index.lookup("acme", _vec(1, 0.05, 0), "Which ports aren't open?")
    assert found is not None and found.key == "k-closed"
    unguarded = SemanticIndex(threshold=0.9, guard=False)
    unguarded.add("acme", _vec(1, 0, 0), "Which ports are open?", "k-open")
    assert unguarded.lookup("acme", _vec(1, 0, 0), "Which ports are not open?") is not None


def test_the_index_is_bounded_per_scope_and_in_scopes_and_forgets() -> None:
    index = SemanticIndex(threshold=0.99, max_entries=2, max_scopes=2)
    for i, key in enumerate(["a", "b", "c"]):
        index.add("s1", np.eye(3, dtype=np.float32)[i], f"question {key}", key)
    assert len(index) == 2
    assert index.lookup("s1", np.eye(3)[0], "question a") is None  # the least recently added went first
    assert index.lookup("s1", np.eye(3)[2], "question c") is not None
    index.add("s2", _vec(1, 0, 0), "q", "k2")
    index.add("s3", _vec(1, 0, 0), "q", "k3")  # s1 was used least recently: dropped
    assert index.lookup("s1", np.eye(3)[2], "question c") is None and len(index) == 2
    index.forget("s3", "k3")
    assert index.lookup("s3", _vec(1, 0, 0), "q") is None and len(index) == 1
    with pytest.raises(ValueError):
        SemanticIndex(threshold=0.0)
