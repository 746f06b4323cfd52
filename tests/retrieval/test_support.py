"""The support check: a sentence the passages hold is supported, one they do not (an invented name, a wrong
number) is not, and the embedder lets a paraphrase through that words alone would not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.documents import Document
from retrieval.policies.base import Question
from retrieval.support import check, sentences
from services.pipeline import AnswerRequest
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit

BRIDGE = (
    "The Lim bridge over the Sava river is maintained by the Quux Works, which inspects it every spring since 1904."
)


def test_sentences_split_at_their_ends_and_lines() -> None:
    assert sentences("It is Quux. It opened in 1904! Why?\nA list line") == [
        "It is Quux.",
        "It opened in 1904!",
        "Why?",
        "A list line",
    ]
    assert sentences("Version 2.5 is current. The end.") == ["Version 2.5 is current.", "The end."]


def test_what_the_passages_hold_is_supported_and_what_they_do_not_is_flagged() -> None:
    answer = (
        "The Quux Works maintain the Lim bridge. They inspect it every spring. "
        "The bridge was designed by Zorblat Ferrand. It has been inspected since 1887. I do not know."
    )
    checks = check(answer, ["The Brindle ferry leaves at nine.", BRIDGE])
    assert [(c.sentence, c.supported) for c in checks] == [
        ("The Quux Works maintain the Lim bridge.", True),
        ("They inspect it every spring.", True),
        ("The bridge was designed by Zorblat Ferrand.", False),  # invented
        ("It has been inspected since 1887.", False),  # a number the passage does not hold
        ("I do not know.", True),  # states nothing to check
    ]
    assert checks[0].passage == 2 and checks[0].lexical >= 0.6 and checks[0].similarity is None


def test_the_embedder_lets_a_paraphrase_through() -> None:
    answer = "Quux looks after that crossing."
    alone = check(answer, [BRIDGE])
    assert not alone[0].supported and alone[0].lexical < 0.6
    # Vectors that say the sentence means what the passage says (cosine 0.9).
    close = check(answer, [BRIDGE], np.array([[1.0, 0.0]]), np.array([[0.9, 0.4359]]))
    assert close[0].supported and close[0].similarity == pytest.approx(0.9, abs=1e-3)
    far = check(answer, [BRIDGE], np.array([[1.0, 0.0]]), np.array([[0.1, 0.995]]))
    assert not far[0].supported


def test_each_answer_carries_its_check(tmp_path: Path, hashing_embedder: Any) -> None:
    engine = ScriptedEngine("The Quux Works maintain the Lim bridge. It was painted purple by Zorblat Ferrand.")
    svc = scripted_service(scripted_config(tmp_path / "index"), hashing_embedder, engine)
    asyncio.run(svc.corpus.ingest([Document(id="bridge", title="Lim bridge", text=BRIDGE)]))
    record = asyncio.run(svc.answer(AnswerRequest(question=Question(text="Who maintains the Lim bridge?"))))
    assert record.support is not None
    assert [s.supported for s in record.support.sentences] == [True, False] and record.support.unsupported == 1
    assert record.support.sentences[0].passage == 1 and record.support.seconds < 5
    assert "support" in record.extension()  # a chat completion carries it under `ragyard` too
    plain = asyncio.run(svc.answer(AnswerRequest(question=Question(text="Hi"), policy="none")))
    assert plain.support is None  # nothing retrieved, nothing to check against
