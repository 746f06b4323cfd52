"""Follow-ups made standalone for retrieval, and the reference-free answer checks (`retrieval.followups`,
`retrieval.grounding`): pure functions, no model."""

from __future__ import annotations

import pytest

from retrieval import followups
from retrieval.generation import ChatMessage
from retrieval.grounding import identifiers, invented_names, restates

pytestmark = pytest.mark.unit

HISTORY = [
    ChatMessage(role="user", content="Who portrayed Corliss Archer in the film Kiss and Tell?"),
    ChatMessage(role="assistant", content="Shirley Temple."),
]


@pytest.mark.parametrize(
    "question",
    [
        "What government position did she hold later?",  # a pronoun
        "And how many dimensions?",  # an opening "and", almost no words of its own
        "Which route lists them?",  # a pronoun
        "In which header?",  # two words of its own
        "What about the TTFT target?",  # an opening "what about"
    ],
)
def test_a_question_that_refers_back_is_a_followup(question: str) -> None:
    assert followups.is_followup(question)


@pytest.mark.parametrize(
    "question",
    ["Which embedder does Ragyard use for dense retrieval?", "How is Ragyard deployed on Kubernetes?"],
)
def test_a_question_that_names_its_subject_stands_alone(question: str) -> None:
    assert not followups.is_followup(question)
    assert followups.with_history(question, HISTORY) is None


def test_history_mode_joins_the_previous_question_and_answer() -> None:
    query = followups.with_history("What government position did she hold later?", HISTORY)
    assert query == (
        "Who portrayed Corliss Archer in the film Kiss and Tell? Shirley Temple. "
        "What government position did she hold later?"
    )
    assert followups.with_history("What did she do?", []) is None  # nothing before it


def test_a_long_previous_answer_is_cut() -> None:
    long = [HISTORY[0], ChatMessage(role="assistant", content="word " * 500)]
    query = followups.with_history("And her?", long)
    assert query is not None and len(query) < 100 + followups.ANSWER_CHARS


def test_the_rewrite_prompt_and_its_cleaning() -> None:
    messages = followups.rewrite_messages("What did she hold later?", HISTORY)
    assert messages[0].role == "system" and "Shirley Temple" in messages[1].content
    assert messages[1].content.endswith("Standalone question:")
    assert (
        followups.clean_rewrite('Standalone question: "What position did Shirley Temple hold?"\nmore', "q")
        == "What position did Shirley Temple hold?"
    )
    assert followups.clean_rewrite("  ", "q") is None
    assert followups.clean_rewrite("What did she hold later?", "What did she hold later?") is None


def test_restatement() -> None:
    q = "Which command serves the embedded default?"
    assert restates(q, "The embedded default is served by the command.")
    assert restates(q, "It is the one that serves it.")  # nothing of its own
    assert not restates(q, "`make run` serves it.")


def test_identifiers_and_invented_names() -> None:
    text = "Run `make test-fast`, set RAGYARD_FOO_BAR, see /v1/qa and README.md, e.g. version 3.5."
    assert identifiers(text) == ["make test-fast", "RAGYARD_FOO_BAR", "/v1/qa", "README.md"]
    passages = ["POST /v1/qa answers. The README.md says so."]
    assert invented_names(text, "How do I test?", passages) == ["make test-fast", "RAGYARD_FOO_BAR"]
    assert invented_names("Use `make test`.", "Is it `make test`?", []) == []  # named in the question


def test_confidence_is_the_token_probability_unless_the_answer_shows_it_failed() -> None:
    from retrieval.grounding import abstains, confidence

    q, passages = "Which route lists the models?", ["GET /v1/models lists auto and each model."]
    sure = confidence(q, "`GET /v1/models` lists them.", passages, [-0.1, -0.3])
    assert sure.reasons == [] and sure.score == sure.token_probability == pytest.approx(0.8187, abs=1e-4)
    assert confidence(q, "The route lists the models.", passages, [-0.01]).reasons == ["restates the question"]
    invented = confidence(q, "Use `GET /v2/catalog`.", passages, [-0.01])
    assert invented.score == 0.0 and invented.reasons[0].startswith("names what no passage holds")
    assert abstains("The passages do not mention it.") and not abstains("It is `GET /v1/models`.")
    assert confidence(q, "I do not know.", passages, None).reasons == ["says the passages do not hold it"]
    assert confidence(q, "`GET /v1/models`.", passages, None).score == 1.0  # no probabilities: nothing against it
