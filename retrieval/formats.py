"""Text out of the files people have: PDF (its text layer, page by page), Word (.docx, headings and tables in
reading order) and web pages (the main text, without navigation and boilerplate).

Each reader is a well-kept library (chosen by a measured comparison, README "Ingestion"): PDFium through
pypdfium2 (13x pypdf's speed on pypdf's own sample files, the same words), python-docx, and trafilatura. What
the chunker can use is kept: headings become markdown headings (the splitter breaks at them first), and a PDF's
page starts are returned so every chunk knows its page. A file a reader cannot use is refused with the reason
(`DocumentFormatError`), never half-read."""

from __future__ import annotations

import io
import logging
import re
import zipfile
from dataclasses import dataclass, field

from retrieval.errors import DocumentFormatError

logger = logging.getLogger(__name__)
# trafilatura logs every page it finds no article in at WARNING and ERROR; a page it cannot use is reported to the
# caller here instead (and a short page falls back to its whole text), so its own log would only repeat that.
logging.getLogger("trafilatura").setLevel(logging.CRITICAL)

# A file's reader runs on bytes the caller sent: bound what one file may make the reader do.
MAX_PDF_PAGES = 2_000
MAX_DOCX_PARTS = 200_000  # paragraphs and table cells
# A page's text below this many visible characters counts as empty (a scan, or a figure).
_MIN_PAGE_CHARS = 3


@dataclass(frozen=True)
class Extracted:
    """A file's text, its title when the file names one, and the offsets in the text where each page after the
    first begins (empty for formats without pages)."""

    text: str
    title: str = ""
    page_starts: list[int] = field(default_factory=list)


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    # PDFium marks soft hyphens and some ligature breaks with control characters; keep tabs and newlines.
    text = re.sub(r"[\x01-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", "", text)
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def read_pdf(raw: bytes) -> Extracted:
    """The text layer of every page, pages separated by a blank line; refused when the file is not a PDF, is
    encrypted, or has no text at all (a scan: run OCR first)."""
    import pypdfium2

    if not raw.lstrip()[:5].startswith(b"%PDF"):
        raise DocumentFormatError("not a PDF file (no %PDF header)")
    try:
        pdf = pypdfium2.PdfDocument(raw)
    except pypdfium2.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            raise DocumentFormatError("the PDF is encrypted; send it without a password") from exc
        raise DocumentFormatError(f"the PDF is damaged or truncated ({reason})") from exc
    try:
        if len(pdf) > MAX_PDF_PAGES:
            raise DocumentFormatError(f"the PDF has {len(pdf)} pages; at most {MAX_PDF_PAGES}")
        parts: list[str] = []
        starts: list[int] = []
        offset = 0
        for n in range(len(pdf)):
            page = pdf[n]
            textpage = page.get_textpage()
            try:
                text = _clean(textpage.get_text_range())
            finally:
                textpage.close()
                page.close()
            if n:
                offset += 2  # the blank line between pages
                starts.append(offset)
            parts.append(text)
            offset += len(text)
        title = (pdf.get_metadata_value("Title") or "").strip()
    except pypdfium2.PdfiumError as exc:
        raise DocumentFormatError(f"the PDF is damaged ({exc})") from exc
    finally:
        pdf.close()
    if sum(len(p) for p in parts) < _MIN_PAGE_CHARS:
        raise DocumentFormatError("the PDF has no text layer (a scan or images only); run OCR on it first")
    return Extracted("\n\n".join(parts), title, starts)


def read_docx(raw: bytes) -> Extracted:
    """Paragraphs and tables in reading order; a paragraph styled "Heading N" (or "Title") becomes a markdown
    heading, a table a row per line with cells separated by " | "."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise DocumentFormatError("not a .docx file (a .docx is a zip archive; this is not one, or it is truncated)")
    try:
        document = docx.Document(io.BytesIO(raw))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DocumentFormatError(f"the .docx is damaged or not a Word document ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - lxml's parse errors and friends: a damaged part, the caller's file
        raise DocumentFormatError(f"the .docx is damaged ({type(exc).__name__}: {exc})") from exc
    lines: list[str] = []
    parts = 0
    title = (document.core_properties.title or "").strip()
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [c.text.strip() for c in row.cells]
                parts += len(cells)
                if any(cells):
                    lines.append(" | ".join(cells))
            lines.append("")
        else:
            parts += 1
            text = block.text.strip()
            if not text:
                continue
            style = (block.style.name if block.style is not None else "") or ""
            level = _heading_level(style)
            if level:
                lines += ["", "#" * level + " " + text, ""]
                if not title and level == 1:
                    title = text
            else:
                lines.append(text)
        if parts > MAX_DOCX_PARTS:
            raise DocumentFormatError(f"the .docx has more than {MAX_DOCX_PARTS} paragraphs and cells")
    text = _clean(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)))
    if not text:
        raise DocumentFormatError("the .docx holds no text")
    return Extracted(text, title)


def _heading_level(style: str) -> int:
    if style == "Title":
        return 1
    match = re.fullmatch(r"Heading ([1-6])", style)
    return int(match.group(1)) if match else 0


def read_html(raw: bytes) -> Extracted:
    """A web page's main text as markdown (headings, lists and tables kept; menus, footers and scripts left
    out), and its title. A page too short for trafilatura to call anything its main text (a notice of one
    paragraph) is taken whole, without its scripts and styles; a page with no visible text is refused."""
    import trafilatura

    # trafilatura finds the encoding itself (the page's charset, else a detector) from the bytes.
    text = trafilatura.extract(
        raw,
        output_format="markdown",
        include_tables=True,
        include_links=False,
        include_comments=False,
        favor_recall=True,
        with_metadata=False,
    )
    if not text or not text.strip():
        text = _visible_text(raw)
    if not text or not text.strip():
        raise DocumentFormatError("the HTML page has no text (only scripts, styles or markup)")
    meta = trafilatura.extract_metadata(raw)
    title = (meta.title or "").strip() if meta is not None else ""
    return Extracted(_clean(text), title)


def _visible_text(raw: bytes) -> str:
    """Every visible text node of a page or fragment, scripts, styles and templates left out (lxml's parser; the
    fallback for what trafilatura finds no article in)."""
    import lxml.etree
    import lxml.html

    try:
        root = lxml.html.fromstring(raw)
    except (lxml.etree.ParserError, ValueError):
        return ""
    hidden = ("script", "style", "noscript", "template")
    if root.tag in hidden:
        return ""
    for node in root.xpath("//script|//style|//noscript|//template"):
        node.drop_tree()
    return re.sub(r"[ \t]+", " ", root.text_content()).strip()


def page_of(page_starts: list[int], offset: int) -> int:
    """The page (from 1) that holds ``offset`` of a text whose later pages begin at ``page_starts``."""
    import bisect

    return bisect.bisect_right(page_starts, offset) + 1
