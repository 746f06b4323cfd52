from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.errors import DocumentFormatError, UnsupportedDocumentTypeError
from retrieval.ingest import load_path, parse, parse_jsonl, type_for_media

pytestmark = pytest.mark.unit


def test_markdown_title_from_heading() -> None:
    [doc] = parse("# Caching\n\nWe cache answers.", "markdown")
    assert doc.title == "Caching"
    assert doc.id.startswith("doc-")


def test_same_content_same_id_explicit_id_kept() -> None:
    a = parse("hello", "text", title="t")[0]
    b = parse("hello", "text", title="t")[0]
    assert a.id == b.id
    assert parse("hello", "text", doc_id="mine")[0].id == "mine"


def test_qa_jsonl_contexts_deduplicated(shared_data: Path) -> None:
    text = (shared_data / "dev_hotpotqa.jsonl").read_text()
    docs = parse_jsonl(text)
    pairs = {(d.title, d.text) for d in docs}
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    expected = {(c["title"], c["text"]) for r in rows for c in r["contexts"]}
    assert pairs == expected
    assert len(docs) == len(expected)


def test_document_jsonl() -> None:
    docs = parse_jsonl('{"id": "a", "title": "A", "text": "alpha"}\n\n{"text": "beta", "metadata": {"k": 1}}\n')
    assert [d.id for d in docs][0] == "a"
    assert docs[1].metadata == {"k": 1}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("{not json", "line 1: not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"question": "q"}', "expected 'contexts'"),
        ('{"contexts": [{"title": "t"}]}', "contexts[0] needs a non-empty 'text'"),
        ('{"text": ""}', "'text' must be a non-empty string"),
        ("\n\n", "no documents"),
    ],
)
def test_bad_jsonl_says_which_line(payload: str, fragment: str) -> None:
    with pytest.raises(DocumentFormatError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_jsonl(payload)


def test_unsupported_types() -> None:
    with pytest.raises(UnsupportedDocumentTypeError, match="supported: text, markdown, jsonl, html, pdf, docx"):
        parse("x", "rtf")
    with pytest.raises(UnsupportedDocumentTypeError):
        type_for_media("application/rtf")
    assert type_for_media("text/markdown; charset=utf-8") == "markdown"
    with pytest.raises(DocumentFormatError, match="empty"):
        parse("   ", "text")


def test_load_folder_skips_empty_and_uses_relative_ids(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Alpha\n\nText.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("Bravo text.")
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "ignored.doc").write_bytes(b"\xd0\xcf\x11\xe0")  # the old binary Word format: not read
    docs = load_path(tmp_path)
    assert sorted(d.id for d in docs) == ["file:a.md", "file:sub/b.txt"]
    assert {d.title for d in docs} == {"Alpha", "b"}
