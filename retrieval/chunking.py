"""Chunking with overlap, measured in embedder tokens (langchain-text-splitters does the splitting)."""

from __future__ import annotations

from typing import Any

from retrieval.documents import Document


class Chunker:
    def __init__(self, tokenizer: Any, chunk_tokens: int, overlap_tokens: int) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self._splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer,
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            separators=["\n## ", "\n### ", "\n\n", "\n", ". ", " ", ""],
            add_start_index=True,
            strip_whitespace=True,
        )

    def split(self, doc: Document) -> list[tuple[int, str]]:
        """(start offset, text) of each chunk of the document, in order."""
        pieces = self._splitter.create_documents([doc.text])
        out = [(int(p.metadata.get("start_index", 0)), p.page_content) for p in pieces if p.page_content.strip()]
        return out or [(0, doc.text.strip() or doc.title)]
