"""Sentence-level context selection: the lines that bear on the question are kept, under their heading and, for a
table row, its header; the rest of each passage is left out, within the budget; the prompt of a service set to
`retrieval.context: sentences` holds the selection while its citations keep the passages whole."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from retrieval.documents import Chunk, Document, Passage
from retrieval.policies.base import Question
from retrieval.selection import best_lines, content_words, select_sentences, split_units
from services.pipeline import AnswerRequest
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit

SETTINGS = """## Settings
The service reads its settings from one YAML file. Every field has a default.

| setting | default | meaning |
| --- | --- | --- |
| `retrieval.top_k` | 4 | passages retrieved per step |
| `cache.ttl_s` | 3600 | how long a cached answer lives |
| `index.chunk_tokens` | 200 | chunk size in embedder tokens |

The settings file is checked when the service starts, and a wrong value stops it with a clear message."""

TESTS = """## Tests
Run `make test` to run the whole suite; it installs what is missing first. Run `make test-unit` for the unit
tests alone, which take about a minute on two cores and need no Redis server."""


def passage(text: str, n: int = 0) -> Passage:
    return Passage(Chunk(chunk_id=n, doc_id=f"doc-{n}", title="Ragyard", text=text, chunk_index=0, start=0), 1.0)


def test_units_are_lines_rows_and_sentences_with_their_heading_and_header() -> None:
    units = split_units(SETTINGS, 0)
    rows = [u for u in units if u.header]
    names = [u.text.split("|")[1].strip() for u in rows]
    assert names == ["`retrieval.top_k`", "`cache.ttl_s`", "`index.chunk_tokens`"]
    assert all(u.header == "| setting | default | meaning |" and u.heading == "Settings" for u in rows)
    assert not any(u.text.startswith("| ---") for u in units)  # the rule row is never a unit
    assert {"retrieval.top_k", "retrieval", "top"} <= content_words("What is retrieval.top_k?")  # and its parts


def test_whole_sentences_rejoin_wrapped_prose_and_do_not_end_at_an_initial() -> None:
    text = """## Winner
Winner is a South Korean boy group formed by YG Entertainment
through the show WIN. The group was formed by S.M. Entertainment in 2008,
said a U.S. paper. Winner debuted.
Its first album was 2014 S/S.
```
make run
make test
```"""
    units = split_units(text, 0, whole_sentences=True)
    assert [u.text for u in units] == [
        "Winner is a South Korean boy group formed by YG Entertainment through the show WIN.",
        "The group was formed by S.M. Entertainment in 2008, said a U.S. paper.",
        "Winner debuted.",
        "Its first album was 2014 S/S.",
        "make run",
        "make test",
    ]
    assert [u.code for u in units] == [False] * 4 + [True] * 2 and {u.heading for u in units} == {"Winner"}
    # A short sentence is quoted with the one after it, on one line; a short line of code with the next, on its own.
    [(_, quote)] = best_lines("Is Winner a boy group? Yes", [passage(text)], whole_sentences=True)
    assert quote == "Winner is a South Korean boy group formed by YG Entertainment through the show WIN."
    [(_, short)] = best_lines("When Winner debuted?", [passage(text)], whole_sentences=True)
    assert short == "Winner debuted. Its first album was 2014 S/S."
    [(_, code)] = best_lines("make run", [passage(text)], whole_sentences=True)
    assert code == "make run\nmake test"


def test_a_chunk_that_starts_inside_a_sentence_quotes_none_of_its_rest() -> None:
    """A chunk cut inside a sentence starts with the rest of it ("its id is `file:<name>`, so ..."): as a quote that
    reads as a fragment, so it is no unit; the chunk's next sentence is."""
    text = "and its id is `file:<name>`, so an edited file replaces its old version.\nUploads are refused over 10,000."
    assert [u.text for u in split_units(text, 0, whole_sentences=True)] == ["Uploads are refused over 10,000."]
    assert len(split_units(text, 0)) == 2  # the prompt's lines keep it: the model may still read it
    whole = "Its id is `file:<name>`. Uploads are refused over 10,000."
    assert len(split_units(whole, 0, whole_sentences=True)) == 2


def test_the_rows_and_sentences_asked_about_are_kept_and_the_rest_left_out() -> None:
    kept = select_sentences("How long does a cached answer live (cache.ttl_s)?", [passage(SETTINGS)], 40)
    assert len(kept) == 1
    text = kept[0].chunk.text
    assert "| `cache.ttl_s` | 3600 |" in text and "| setting | default | meaning |" in text  # the row under its header
    assert text.startswith("## Settings")  # under its passage's heading
    assert "chunk_tokens" not in text and "YAML" not in text  # not asked about, and over the budget
    assert kept[0].chunk.doc_id == "doc-0"  # the passage's identity is kept for its citation


def test_a_passage_with_nothing_asked_about_is_dropped() -> None:
    kept = select_sentences("Which command runs the unit tests alone?", [passage(SETTINGS, 0), passage(TESTS, 1)], 60)
    assert [p.chunk.doc_id for p in kept] == ["doc-1"]
    assert "`make test-unit`" in kept[0].chunk.text


def test_within_the_budget_and_nothing_when_nothing_matches() -> None:
    both = [passage(SETTINGS, 0), passage(TESTS, 1)]
    small = select_sentences("Which settings and tests are there?", both, 40)
    large = select_sentences("Which settings and tests are there?", both, 400)
    assert sum(len(p.chunk.text) for p in small) < sum(len(p.chunk.text) for p in large)
    assert sum(len(p.chunk.text) for p in small) <= 40 * 3.5 + len("## Settings\n## Tests\n") + 40
    assert select_sentences("Why?", both, 40) == []  # no content word to select by: shown whole
    assert select_sentences("zebra giraffe", both, 40) == []  # nothing asked about is in them


def test_a_follow_ups_own_words_choose_the_lines_before_its_historys() -> None:
    """Searched with the conversation's words joined to it, a follow-up still gets the lines about what it asks:
    the history's words ("response cache", "redis") found the passage, the follow-up's own ("port") pick its line."""
    text = (
        "The response cache is kept in Redis.\n"
        "Each cached answer lives for an hour and is checked against its sources on every hit.\n"
        "An entry holds the answer, its citations and the fingerprints of its documents.\n"
        "Redis listens on port 6390 in the test suite, started by the suite itself."
    )
    query = "How is the response cache kept in Redis? It is kept in Redis when REDIS_URL is set. Which port?"
    every_word_alike = select_sentences(query, [passage(text)], 20)[0].chunk.text
    weighted = select_sentences("Which port?", [passage(text)], 20, context=query)[0].chunk.text
    assert "6390" not in every_word_alike and "kept in Redis" in every_word_alike
    assert weighted == "Redis listens on port 6390 in the test suite, started by the suite itself."
    # Without a query of its own the selection is the plain one.
    assert select_sentences("Which port?", [passage(text)], 20, context=None) == select_sentences(
        "Which port?", [passage(text)], 20
    )


def test_a_service_set_to_sentences_prompts_with_the_selection(tmp_path: Path, hashing_embedder: Any) -> None:
    engine = ScriptedEngine("`make test-unit` runs them.")
    config = scripted_config(tmp_path / "index", retrieval={"context": "sentences", "sentence_tokens": 40})
    svc = scripted_service(config, hashing_embedder, engine)
    docs = [
        Document(id="tests", title="Ragyard", text=TESTS),
        Document(id="settings", title="Ragyard", text=SETTINGS),
        Document(id="ferry", title="Ferry", text="The Brindle ferry leaves the north pier at nine every morning."),
    ]
    asyncio.run(svc.corpus.ingest(docs))
    record = asyncio.run(svc.answer(AnswerRequest(question=Question(text="Which command runs the unit tests?"))))
    prompt = engine.prompts[-1]
    assert "make test-unit" in prompt and "YAML" not in prompt and "chunk size" not in prompt and "ferry" not in prompt
    # The search took `sentence_candidates` passages (all three); the answer cites the one an excerpt came from.
    retrieve = next(s for s in record.trace if s["step"] == "retrieve")
    assert retrieve["top_k"] == 8 and len(retrieve["hits"]) == 3
    assert [c.document_id for c in record.citations] == ["tests"]
