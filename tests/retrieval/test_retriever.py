from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from retrieval.documents import Document
from retrieval.errors import DocumentFormatError
from retrieval.ingest import parse_jsonl
from retrieval.langchain_adapter import RagyardRetriever
from retrieval.retriever import Retriever

pytestmark = [pytest.mark.integration, pytest.mark.model]


@pytest.fixture
def retriever(embedder: Any, tmp_path: Path) -> Retriever:
    return Retriever.create(index_dir=tmp_path / "idx", embedder=embedder, chunk_tokens=64, chunk_overlap_tokens=16)


def test_embedder_is_normalised(embedder: Any) -> None:
    v = embedder.encode(["a sentence", "another"])
    assert v.shape == (2, 384)
    assert abs(float((v[0] ** 2).sum()) - 1.0) < 1e-4
    assert len(embedder.embed_query("x")) == 384


def test_chunking_overlaps_long_documents(retriever: Retriever) -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(120))
    pieces = retriever.chunker.split(Document(title="Long", text=text))
    assert len(pieces) > 3
    starts = [s for s, _ in pieces]
    assert starts == sorted(starts)
    # Overlap: each chunk begins before the previous one ends.
    assert all(starts[i + 1] < starts[i] + len(pieces[i][1]) for i in range(len(pieces) - 1))


def test_real_questions_find_their_gold_passages(retriever: Retriever, shared_data: Path) -> None:
    import json

    path = shared_data / "dev_hotpotqa.jsonl"
    # The first 25 rows' paragraphs (250, each row's 2 gold among 8 distractors): the 10 questions asked find their
    # gold among the other 15 rows' paragraphs too, at half the embedding of the whole file.
    lines = path.read_text().splitlines()[:25]
    retriever.ingest(parse_jsonl("\n".join(lines)))
    rows = [json.loads(line) for line in lines[:10]]
    found = 0
    for row in rows:
        titles = {p.chunk.title for p in retriever.search(row["question"], 5)}
        found += bool(titles & {c["title"] for c in row["contexts"]})
    assert found >= 8


def test_reingest_does_not_duplicate_and_survives_restart(retriever: Retriever, embedder: Any, tmp_path: Path) -> None:
    doc = Document(title="Quux", text="Zorblat is the capital of the kingdom of Quux.")
    first = retriever.ingest([doc])
    assert first.added == [doc.id]
    again = retriever.ingest([doc, doc])
    assert again.unchanged == [doc.id] and again.chunks_added == 0
    assert len(retriever.store) == 1
    hit = retriever.search("What is the capital of Quux?", 1)[0]
    assert hit.chunk.doc_id == doc.id and hit.score > 0.5
    reopened = Retriever.create(index_dir=tmp_path / "idx", embedder=embedder)
    assert len(reopened.store) == 1
    assert reopened.search("capital of Quux", 1)[0].chunk.text == hit.chunk.text


GUIDE = """# Ferry guide

## Timetable

Boats run every day of the year from the north pier, weather allowing, and the harbour office posts changes.

### Winter

The first boat leaves at nine and the last at five.

## Fares

A return ticket costs twelve crowns; children under twelve travel free with an adult, and bicycles pay two crowns.
"""


def test_chunks_carry_their_sections_and_a_new_chunking_cuts_them_again(embedder: Any, tmp_path: Path) -> None:
    from retrieval.prompts import passage_body

    doc = Document(id="guide", title="Ferry guide", text=GUIDE)
    small = Retriever.create(index_dir=tmp_path / "g", embedder=embedder, chunk_tokens=32, chunk_overlap_tokens=8)
    assert small.ingest([doc]).added == ["guide"]
    sections = {c.text.splitlines()[0]: c.section for c in small.store.chunks.values()}
    assert sections == {"# Ferry guide": "", "## Timetable": "", "### Winter": "Timetable", "## Fares": ""}
    hit = small.search("When does the first boat leave in winter?", 1, mode="bm25")[0]
    # BM25 and the embedder read the section; the prompt shows the chunk under its title only.
    assert hit.chunk.heading == "Ferry guide › Timetable"
    assert passage_body(hit) == "Ferry guide\n### Winter\n\nThe first boat leaves at nine and the last at five."
    assert small.ingest([doc]).unchanged == ["guide"]
    small.store.close()
    # Cut with other sizes, the same text is indexed again (not kept as the old sizes cut it), then kept.
    recut = Retriever.create(index_dir=tmp_path / "g", embedder=embedder, chunk_tokens=64, chunk_overlap_tokens=16)
    assert recut.store.docs[("shared", "guide")]["chunking"] == "32/8/v2"
    assert recut.ingest([doc]).updated == ["guide"]
    assert recut.store.docs[("shared", "guide")]["chunking"] == "64/16/v2"
    assert recut.ingest([doc]).unchanged == ["guide"]


def test_new_version_replaces_old(retriever: Retriever) -> None:
    retriever.ingest([Document(id="policy", title="Policy", text="Refunds take 30 days.")])
    report = retriever.ingest([Document(id="policy", title="Policy", text="Refunds take 14 days.")])
    assert report.updated == ["policy"]
    texts = [c.text for c in retriever.store.chunks.values()]
    assert texts == ["Refunds take 14 days."]


def test_bad_document_leaves_index_unchanged(retriever: Retriever) -> None:
    retriever.ingest([Document(title="Keep", text="This stays.")])
    before = retriever.stats()
    with pytest.raises(DocumentFormatError):
        retriever.ingest([Document(title="New", text="fine"), Document(title="Empty", text="   ")])
    assert retriever.stats() == before


def test_langchain_retriever_adapter(retriever: Retriever) -> None:
    retriever.ingest(
        [
            Document(title="Quux", text="Zorblat is the capital of Quux."),
            Document(title="Other", text="Bananas are yellow."),
        ]
    )
    docs = RagyardRetriever(retriever=retriever, k=1).invoke("capital of Quux")
    assert len(docs) == 1 and docs[0].metadata["title"] == "Quux" and "Zorblat" in docs[0].page_content


def _state(retriever: Retriever) -> tuple[dict[str, str], int, list[str]]:
    """What a reader sees: each document's fingerprint, the chunk count, and the top hit of a query."""
    store = retriever.store
    top = [p.chunk.doc_id for p in retriever.search("Who maintains the Lim bridge?", 3)]
    return {d: str(e["fingerprint"]) for d, e in store.docs.items()}, len(store.chunks), top


def _assert_memory_matches_disk(retriever: Retriever, embedder: Any, index_dir: Path) -> None:
    reopened = Retriever.create(index_dir=index_dir, embedder=embedder, chunk_tokens=64, chunk_overlap_tokens=16)
    assert _state(reopened) == _state(retriever)
    assert reopened.store.index.ntotal == retriever.store.index.ntotal == len(retriever.store.chunks)


@pytest.mark.parametrize("fail_at", ["embed", "second upsert", "save"])
def test_a_failing_batch_changes_nothing_in_memory_or_on_disk(
    retriever: Retriever, embedder: Any, tmp_path: Path, fail_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that updates one document and adds two fails part-way: at embedding, at its second
    upsert (after the first changed the index) or at the save. The store is as it was, in memory and
    on disk, and a retry of the same batch then succeeds."""
    base = [
        Document(id="bridge", title="Lim bridge", text="The Lim bridge is maintained by the Quux company."),
        Document(id="river", title="Lim river", text="The Lim river floods in May."),
    ]
    retriever.ingest(base)
    before = _state(retriever)
    batch = [
        Document(id="bridge", title="Lim bridge", text="The Lim bridge is maintained by the Zorblat guild."),
        Document(id="tower", title="Lim tower", text="The Lim tower is 40 metres tall."),
        Document(id="gate", title="Lim gate", text="The Lim gate opens at dawn."),
    ]
    boom = RuntimeError(f"injected failure at {fail_at}")
    if fail_at == "embed":
        monkeypatch.setattr(retriever.embedder, "encode", mock.Mock(side_effect=boom))
    elif fail_at == "second upsert":
        real = retriever.store.upsert_record
        calls = iter(range(100))
        monkeypatch.setattr(
            retriever.store,
            "upsert_record",
            lambda *a, **k: real(*a, **k) if next(calls) == 0 else (_ for _ in ()).throw(boom),
        )
    else:
        monkeypatch.setattr(retriever.store, "save", mock.Mock(side_effect=boom))
    with pytest.raises(RuntimeError, match="injected"):
        retriever.ingest(batch)
    monkeypatch.undo()
    assert _state(retriever) == before
    _assert_memory_matches_disk(retriever, embedder, tmp_path / "idx")
    report = retriever.ingest(batch)
    assert report.updated == ["bridge"] and sorted(report.added) == ["gate", "tower"]
    assert retriever.search("Who maintains the Lim bridge?", 1)[0].chunk.text.endswith("Zorblat guild.")
    _assert_memory_matches_disk(retriever, embedder, tmp_path / "idx")


def test_a_large_encode_lets_a_small_one_in_between_its_slices(embedder: Any) -> None:
    """The model is held a slice of texts at a time: a question embedded while an upload's chunks are being
    embedded finishes long before them (an event, not a timing: it ends first)."""
    import threading
    import time

    from retrieval.embedder import LOCK_SLICE

    texts = ["a long passage about bridges and rivers " * 30] * (LOCK_SLICE * 5)
    ended: dict[str, float] = {}

    def big() -> None:
        embedder.encode(texts)
        ended["big"] = time.monotonic()

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.2)  # the big encode holds its first slice
    vector = embedder.encode(["Who maintains the Lim bridge?"])
    ended["small"] = time.monotonic()
    thread.join(timeout=120)
    assert vector.shape == (1, 384)
    assert ended["small"] < ended["big"]


def test_the_tokenizer_and_the_model_are_safe_to_call_from_two_threads(embedder: Any) -> None:
    """The chunker and the embeddings route count tokens while another thread embeds: the tokenizer (one Rust
    object whose padding settings each call sets) runs under the embedder's lock, so neither call fails."""
    import threading

    texts = [("word " * n).strip() for n in range(1, 120)]
    errors: list[BaseException] = []

    def count() -> None:
        try:
            for _ in range(400):
                embedder.tokenizer(texts[:40], add_special_tokens=True)
                embedder.tokenizer(texts[5], add_special_tokens=False, verbose=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=count)
    thread.start()
    for _ in range(60):
        assert embedder.encode(texts[:24]).shape == (24, 384)
    thread.join(timeout=120)
    assert errors == []
