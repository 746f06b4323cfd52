from __future__ import annotations

import numpy as np
import pytest

from retrieval.policies.dragin_signals import first_trigger, is_content_token, locate, qfs_query, rind_scores

pytestmark = pytest.mark.unit


def test_content_tokens() -> None:
    assert is_content_token(" Paris") and is_content_token("1889")
    assert not is_content_token(" the") and not is_content_token(".") and not is_content_token("<|im_end|>")


def _toy() -> tuple[list[str], list[str], np.ndarray, list[float]]:
    # prompt: 3 tokens; completion: " The tower is in Lyon ." (6 tokens)
    prompt = ["Landmark", " is", " Eiffel"]
    completion = [" The", " tower", " is", " in", " Lyon", " ."]
    t = len(prompt) + len(completion)
    att = np.zeros((len(completion), t))
    att[5, 3 + 4] = 0.6  # "." attends to "Lyon"
    att[5, 3 + 1] = 0.3  # "." attends to "tower"
    att[4, 3 + 1] = 0.5  # "Lyon" attends to "tower"
    att[4, 2] = 0.9  # "Lyon" attends to prompt "Eiffel"
    att[4, 0] = 0.2  # ... and to "Landmark"
    entropies = [0.5, 1.0, 0.2, 0.1, 3.0, 0.4]
    return prompt, completion, att, entropies


def test_rind_by_hand() -> None:
    prompt, completion, att, ent = _toy()
    scores = rind_scores(ent, att, completion, len(prompt))
    # "The", "is", "in", "." are stopwords/punctuation: 0. "tower": 1.0 x max(0.5, 0.3) = 0.5.
    # "Lyon": 3.0 x 0.6 = 1.8.
    assert scores == pytest.approx([0.0, 0.5, 0.0, 0.0, 1.8, 0.0])
    trig = first_trigger(scores, completion, threshold=1.0)
    assert trig is not None and trig.index == 4 and trig.token == " Lyon"
    assert first_trigger(scores, completion, threshold=0.4).index == 1  # type: ignore[union-attr]
    assert first_trigger(scores, completion, threshold=2.0) is None


def test_rind_scores_a_one_word_answer_by_its_entropy() -> None:
    """Nothing attends to the completion's last token: it counts fully (a one-word answer can trigger)."""
    att = np.zeros((1, 4))
    assert rind_scores([0.7], att, [" Yes"], 3) == pytest.approx([0.7])
    assert rind_scores([0.7], att, [" the"], 3) == [0.0]  # still not a stopword


def test_rind_without_attention_uses_entropy() -> None:
    prompt, completion, _, ent = _toy()
    assert rind_scores(ent, None, completion, len(prompt)) == pytest.approx([0.0, 1.0, 0.0, 0.0, 3.0, 0.0])


def test_qfs_picks_most_attended_context_tokens_in_order() -> None:
    prompt, completion, att, _ = _toy()
    tokens = prompt + completion
    row = att[4]  # the trigger "Lyon"
    # context before the trigger: Landmark(0.2) is(stop) Eiffel(0.9) The(stop) tower(0.5) is in
    assert qfs_query(row, tokens, upto=len(prompt) + 4, n=2) == "Eiffel tower"
    assert qfs_query(row, tokens, upto=len(prompt) + 4, n=3) == "Landmark Eiffel tower"


def test_qfs_joins_subword_pieces() -> None:
    tokens = [" Hork", "-", "B", "ajir", " books", " are"]
    row = np.array([0.1, 0.0, 0.0, 0.8, 0.05, 0.9])
    assert qfs_query(row, tokens, upto=6, n=1) == "Hork-Bajir"


def test_qfs_from_a_start_position_and_locate() -> None:
    tokens = ["<|im_start|>", "system", " Answer", " briefly", "\n", "Question", ":", " Who", " built", " Eiffel", "?"]
    assert locate(tokens, "Who built Eiffel?") == 7
    row = np.array([0.0, 0.0, 0.9, 0.9, 0.0, 0.1, 0.0, 0.0, 0.3, 0.5, 0.0])
    assert qfs_query(row, tokens, upto=len(tokens), n=2, start=7) == "built Eiffel"
    assert locate(tokens, "not there") == 0
