"""Chunking with overlap, measured in embedder tokens (langchain-text-splitters does the splitting)."""

from __future__ import annotations

from typing import Any

from retrieval.documents import Document


class Chunker:
    def __init__(self, tokenizer: Any, chunk_tokens: int, overlap_tokens: int) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

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
