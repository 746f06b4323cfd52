"""The comparison that chose the format readers (README "Documents as people have them"): each candidate library on
`ragyard bench ingest`'s files, files read, characters recovered, seconds, and for PDFs the word overlap of the
two readers' texts. The alternatives are not Ragyard's dependencies: run it in a scratch environment that has them,

    python -m venv /tmp/readers && /tmp/readers/bin/pip install pypdf pypdfium2 python-docx docx2txt mammoth \
        trafilatura lxml_html_clean selectolax html2text
    PYTHONPATH=. /tmp/readers/bin/python -m bench.compare_readers ~/.cache/ragyard/ingest-corpus

(`ragyard bench ingest` fetches that folder first.) Prints one line per library."""

from __future__ import annotations

import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _run(name: str, files: list[Path], read: Callable[[Path], str]) -> dict[Path, str]:
    out: dict[Path, str] = {}
    failed = 0
    start = time.perf_counter()
    for f in files:
        try:
            out[f] = read(f)
        except Exception:  # noqa: BLE001 - a candidate's failure on a file is what is counted
            failed += 1
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in out)
    chars = sum(len(t) for t in out.values())
    print(f"{name:12} read={len(out)} failed={failed} chars={chars} s={seconds:.2f} MB/s={size / seconds / 1e6:.2f}")
    return out


def main(root: str) -> None:
    import docx
    import docx2txt
    import html2text
    import mammoth
    import pypdf
    import pypdfium2
    import selectolax.lexbor
    import trafilatura

    warnings.filterwarnings("ignore")
    base = Path(root).expanduser()
    pdfs = sorted(base.rglob("*.pdf"))
    docxs = sorted(base.rglob("*.docx"))
    htmls = sorted(base.rglob("*.html"))

    def with_pypdf(p: Path) -> str:
        reader = pypdf.PdfReader(p)
        if reader.is_encrypted:
            raise ValueError("encrypted")
        return "\n".join(page.extract_text() or "" for page in reader.pages)

    def with_pdfium(p: Path) -> str:
        pdf = pypdfium2.PdfDocument(p)
        try:
            return "\n".join(page.get_textpage().get_text_range() for page in pdf)
        finally:
            pdf.close()

    a = _run("pypdf", pdfs, with_pypdf)
    b = _run("pypdfium2", pdfs, with_pdfium)
    both = [f for f in a if f in b and a[f].strip() and b[f].strip()]
    overlap = statistics.median(len(_words(a[f]) & _words(b[f])) / len(_words(a[f]) | _words(b[f])) for f in both)
    print(f"PDF word overlap (Jaccard, median over {len(both)} files both read): {overlap:.3f}")
    _run("python-docx", docxs, lambda p: "\n".join(par.text for par in docx.Document(str(p)).paragraphs))
    _run("docx2txt", docxs, lambda p: docx2txt.process(str(p)))
    _run("mammoth", docxs, lambda p: mammoth.extract_raw_text(p.open("rb")).value)
    _run("trafilatura", htmls, lambda p: trafilatura.extract(p.read_bytes()) or "")

    def with_selectolax(p: Path) -> str:
        body = selectolax.lexbor.LexborHTMLParser(p.read_text(errors="replace")).body
        return body.text(separator="\n") if body is not None else ""

    _run("selectolax", htmls, with_selectolax)
    _run("html2text", htmls, lambda p: html2text.html2text(p.read_text(errors="replace")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "~/.cache/ragyard/ingest-corpus")
