"""The format readers on real files from the libraries' own test suites (tests/retrieval/files/README.md):
text recovered with its structure, pages that travel to every chunk, and bad files refused with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from retrieval.errors import DocumentFormatError, UnsupportedDocumentTypeError
from retrieval.formats import page_of, read_docx, read_html, read_pdf
from retrieval.ingest import load_path, parse, parse_file, type_for_media
from retrieval.retriever import Retriever

pytestmark = pytest.mark.unit

FILES = Path(__file__).parent / "files"


def _raw(name: str) -> bytes:
    return (FILES / name).read_bytes()


def test_a_pdfs_text_layer_comes_out_page_by_page() -> None:
    one = read_pdf(_raw("crazyones.pdf"))
    assert one.text.startswith("The Crazy Ones\nOctober 14, 1998\n")
    assert "Here" in one.text and "\r" not in one.text
    assert one.page_starts == []
    four = read_pdf(_raw("pdflatex-outline.pdf"))
    assert len(four.page_starts) == 3
    # Each page begins where its start says: page 2 opens on section 1's heading, after page 1's contents.
    assert four.text[four.page_starts[0] :].startswith("1 Foo\nHello, here is some text")
    assert page_of(four.page_starts, 0) == 1
    assert page_of(four.page_starts, four.page_starts[0]) == 2
    assert page_of(four.page_starts, len(four.text) - 1) == 4


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("encrypted-file.pdf", "encrypted"),
        ("imagemagick-lzw.pdf", "no text layer"),
    ],
)
def test_pdfs_that_cannot_be_read_are_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(DocumentFormatError, match=reason):
        read_pdf(_raw(name))


def test_broken_pdfs_are_refused() -> None:
    raw = _raw("pdflatex-outline.pdf")
    with pytest.raises(DocumentFormatError, match="not a PDF"):
        read_pdf(b"GIF89a" + raw)
    with pytest.raises(DocumentFormatError, match="damaged or truncated"):
        read_pdf(raw[:300])


def test_word_headings_become_markdown_and_tables_rows() -> None:
    styled = read_docx(_raw("par-known-styles.docx"))
    assert "\n# Heading 1\n\nBody Text" in styled.text
    assert styled.title == "Heading 1"
    tables = read_docx(_raw("tbl-having-applied-style.docx"))
    assert "foo to you | and a hearty foo to you too sir!" in tables.text.splitlines()


def test_broken_word_files_are_refused() -> None:
    raw = _raw("par-known-styles.docx")
    with pytest.raises(DocumentFormatError, match="not a .docx"):
        read_docx(raw[: len(raw) // 2])  # truncated: its zip directory is at the end
    with pytest.raises(DocumentFormatError, match="not a .docx"):
        read_docx(b"plain text, not a zip archive")


def test_a_web_pages_main_text_without_its_navigation() -> None:
    page = read_html(_raw("mozilla.org.firefox.developer.html"))
    assert page.title == "Welcome to Firefox Developer Edition"
    assert page.text.startswith("# Welcome to Firefox Developer Edition")
    assert "Develop, deploy and debug Firefox OS apps" in page.text
    # The page's menus and footer are not its text.
    assert "Privacy Policy" not in page.text and "<script" not in page.text


def test_a_short_notice_is_taken_whole_without_its_scripts() -> None:
    # Trafilatura finds no article in a page whose only text is a footer, nor in a bare paragraph.
    page = read_html(b"<html><body><script>track()</script><footer>Closed on <b>Monday</b>.</footer></body></html>")
    assert page.text == "Closed on Monday."
    assert read_html(b"<p>Closed.</p><style>p {}</style>").text == "Closed."


def test_a_page_of_scripts_is_refused() -> None:
    with pytest.raises(DocumentFormatError, match="no text"):
        read_html(b"<html><head><script>var a = 1;</script></head><body><script>go()</script></body></html>")


def test_files_by_media_type_and_json_refuses_binary_types() -> None:
    assert type_for_media("application/pdf") == "pdf"
    assert type_for_media("application/vnd.openxmlformats-officedocument.wordprocessingml.document") == "docx"
    assert type_for_media("text/html; charset=utf-8") == "html"
    with pytest.raises(UnsupportedDocumentTypeError):
        type_for_media("application/msword")  # the old binary .doc: not read
    with pytest.raises(DocumentFormatError, match="send it as its own content type"):
        parse("%PDF-1.4 ...", "pdf")
    [html] = parse(
        "<html><body><article><h1>Caching</h1><p>We cache answers for an hour.</p></article></body></html>", "html"
    )
    assert "We cache answers for an hour." in html.text


def test_a_pdf_document_knows_its_pages_and_the_file_names_bad_input() -> None:
    [doc] = parse_file(_raw("pdflatex-outline.pdf"), "pdf", doc_id="outline")
    assert doc.metadata["pages"] == 4 and len(doc.page_starts) == 3
    with pytest.raises(DocumentFormatError, match="not UTF-8"):
        parse_file(b"caf\xe9", "text")


def test_a_folder_of_mixed_files_is_read_and_a_bad_file_is_named(tmp_path: Path) -> None:
    for name in ("crazyones.pdf", "par-known-styles.docx", "mozilla.org.firefox.developer.html"):
        shutil.copy(FILES / name, tmp_path / name)
    (tmp_path / "notes.md").write_text("# Notes\n\nSome notes.", encoding="utf-8")
    docs = load_path(tmp_path)
    assert sorted(d.id for d in docs) == [
        "file:crazyones.pdf",
        "file:mozilla.org.firefox.developer.html",
        "file:notes.md",
        "file:par-known-styles.docx",
    ]
    titles = {d.id: d.title for d in docs}
    assert titles["file:crazyones.pdf"] == "crazyones"  # the PDF names no title: the file's name
    assert titles["file:mozilla.org.firefox.developer.html"] == "Welcome to Firefox Developer Edition"
    shutil.copy(FILES / "encrypted-file.pdf", tmp_path / "locked.pdf")
    with pytest.raises(DocumentFormatError, match=r"locked\.pdf: the PDF is encrypted"):
        load_path(tmp_path)


def test_every_chunk_of_a_pdf_carries_its_page_through_a_restart(tmp_path: Path, hashing_embedder: Any) -> None:
    retriever = Retriever.create(index_dir=tmp_path / "index", embedder=hashing_embedder, chunk_tokens=96)
    [doc] = parse_file(_raw("pdflatex-outline.pdf"), "pdf", doc_id="outline")
    retriever.ingest([doc])
    chunks = sorted(retriever.store.chunks.values(), key=lambda c: c.chunk_index)
    assert len(chunks) > 4
    pages = [c.page for c in chunks]
    assert pages[0] == 1 and pages[-1] == 4 and pages == sorted(pages)
    for c in chunks:
        assert c.page == page_of(doc.page_starts, c.start)
    retriever.store.close()
    again = Retriever.create(index_dir=tmp_path / "index", embedder=hashing_embedder, chunk_tokens=96)
    assert sorted((c.chunk_index, c.page) for c in again.store.chunks.values()) == [
        (c.chunk_index, c.page) for c in chunks
    ]
    # What seeding a corpus log from this store writes (and a replica applies) carries the pages too.
    [record], _ = again.store.records()
    assert record["page_starts"] == doc.page_starts
    again.store.close()
