"""Chunking with overlap, measured in embedder tokens (langchain-text-splitters does the splitting), and the
headings each chunk sits under."""

from __future__ import annotations

import bisect
import re
from typing import Any

from retrieval.documents import SECTION_SEPARATOR, Document

# Bumped when what a chunk holds changes for the same text and sizes (2: its section's headings), so an index cut
# otherwise is cut again at the next ingest instead of kept as it was (`Chunker.signature`).
CHUNK_FORMAT = 2
_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def section_trails(text: str) -> list[tuple[int, list[str]]]:
    """Where each markdown heading line begins, and the headings it sits under (itself last), outside fenced code.
    Markdown files have them, and so do Word and web pages as `retrieval.formats` reads them."""
    out: list[tuple[int, list[str]]] = []
    trail: list[tuple[int, str]] = []
    fenced = False
    pos = 0
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        if _FENCE.match(bare):
            fenced = not fenced
        elif not fenced and (m := _MD_HEADING.match(bare)):
            level = len(m.group(1))
            trail = [t for t in trail if t[0] < level] + [(level, m.group(2).strip())]
            out.append((pos, [name for _, name in trail]))
        pos += len(line)
    return out


def section_at(trails: list[tuple[int, list[str]]], starts: list[int], start: int, text: str, title: str) -> str:
    """The headings a chunk starting at ``start`` sits under: the last heading at or before it and that heading's
    parents, less the heading the chunk itself opens with (its text shows it) and the document's title."""
    i = bisect.bisect_right(starts, start) - 1
    if i < 0:
        return ""
    names = trails[i][1]
    if names and _MD_HEADING.match(text.split("\n", 1)[0].strip()) and trails[i][0] >= start - 1:
        names = names[:-1]
    if names and names[0].strip().lower() == title.strip().lower():
        names = names[1:]
    return SECTION_SEPARATOR.join(names)


class Chunker:
    def __init__(self, tokenizer: Any, chunk_tokens: int, overlap_tokens: int) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        # How this chunker cuts: a document stored with another signature is cut again when it is ingested again.
        self.signature = f"{chunk_tokens}/{overlap_tokens}/v{CHUNK_FORMAT}"

        def n_tokens(text: str) -> int:
            # verbose=False: whole documents are measured too, and the "longer than the model's
            # maximum" warning would be noise here.
            return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

        self._splitter = RecursiveCharacterTextSplitter(
            length_function=n_tokens,
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            separators=["\n## ", "\n### ", "\n\n", "\n", ". ", " ", ""],
            strip_whitespace=True,
        )

    def split(self, doc: Document) -> list[tuple[int, str]]:
        """(start offset, text) of each chunk of the document, in order."""
        out: list[tuple[int, str]] = []
        cursor = 0
        for piece in self._splitter.split_text(doc.text):
            if not piece.strip():
                continue
            # Offsets are found here: langchain's add_start_index reports -1 for some overlapping chunks.
            found = doc.text.find(piece, cursor)
            start = found if found != -1 else cursor
            out.append((start, piece))
            cursor = start + 1
        return out or [(0, doc.text.strip() or doc.title)]

    def sections(self, doc: Document, pieces: list[tuple[int, str]]) -> list[str]:
        """Each piece's section (`Chunk.section`): the headings it sits under in the document."""
        trails = section_trails(doc.text)
        starts = [pos for pos, _ in trails]
        return [section_at(trails, starts, start, text, doc.title) for start, text in pieces]
