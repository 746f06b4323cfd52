"""The retriever: chunk, embed and index documents; embed queries and search."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from retrieval.chunking import Chunker
from retrieval.documents import Document, IngestReport, Passage
from retrieval.errors import DocumentFormatError, DocumentNotFoundError, DocumentOwnershipError
from retrieval.lexical import LexicalIndex, reciprocal_rank_fusion
from retrieval.store import VectorStore

if TYPE_CHECKING:
    from retrieval.embedder import Embedder

logger = logging.getLogger(__name__)

SearchMode = Literal["dense", "bm25", "hybrid"]


class Retriever:
    def __init__(self, embedder: Embedder, store: VectorStore, chunker: Chunker) -> None:
        self.embedder = embedder
        self.store = store
        self.chunker = chunker
        # Ingests are serialised so two uploads of one document cannot both add it.
        self._ingest_lock = threading.Lock()
        self.lexical = LexicalIndex(store)

    @classmethod
    def create(
        cls,
        *,
        index_dir: str | Path | None,
        chunk_tokens: int = 200,
        chunk_overlap_tokens: int = 40,
        embedder: Embedder | None = None,
        embedder_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        lock_timeout_s: float = 10.0,
    ) -> Retriever:
        from retrieval.embedder import Embedder

        emb = embedder or Embedder(embedder_path, device=device, batch_size=batch_size)
        if index_dir is None:
            store = VectorStore(emb.dim, emb.name)
        else:
            store = VectorStore.open(emb.dim, emb.name, index_dir, lock_timeout_s=lock_timeout_s)
        return cls(emb, store, Chunker(emb.tokenizer, chunk_tokens, chunk_overlap_tokens))

    def ingest(self, docs: list[Document]) -> IngestReport:
        """Index ``docs`` as one batch (all or nothing). A document whose id another namespace holds is
        refused with the whole batch (DocumentOwnershipError) before anything changes."""
        report = IngestReport()
        with self._ingest_lock:
            pending: list[tuple[Document, list[tuple[int, str]]]] = []
            seen: set[str] = set()
            for doc in docs:
                if not doc.text.strip():
                    raise DocumentFormatError(f"document {doc.id!r} has no text")
                owner = self.store.owner(doc.id)
                if owner is not None and owner != doc.namespace:
                    raise DocumentOwnershipError(f"document id {doc.id!r} belongs to another namespace")
                if doc.id in seen:
                    continue
                seen.add(doc.id)
                if self.store.fingerprint(doc.id) == doc.fingerprint:
                    report.unchanged.append(doc.id)
                    continue
                pending.append((doc, self.chunker.split(doc)))
            # All chunks of the batch are embedded before the index changes: a failure leaves it as it was.
            texts = [self._embed_text(doc, text) for doc, pieces in pending for _, text in pieces]
            vectors = self.embedder.encode(texts)
            offset = 0
            # The batch is one transaction: a failing upsert or save undoes the batch's changes in memory,
            # and the snapshot on disk is still the one before it.
            with self.store.transaction():
                for doc, pieces in pending:
                    outcome = self.store.upsert(doc, pieces, vectors[offset : offset + len(pieces)])
                    offset += len(pieces)
                    (report.added if outcome == "added" else report.updated).append(doc.id)
                    report.chunks_added += len(pieces)
                if pending:
                    self.store.save()
        return report

    @staticmethod
    def _embed_text(doc: Document, text: str) -> str:
        # The title is part of what a chunk is about (HotpotQA paragraphs rarely repeat their subject).
        return f"{doc.title}\n{text}" if doc.title and not text.startswith(doc.title) else text

    def remove(self, doc_id: str, namespace: str | None = None) -> bool:
        """Remove a document (of ``namespace``, when given: another namespace's is refused, and one the
        caller cannot read is not found). False: there is no such document."""
        with self._ingest_lock, self.store.transaction():
            owner = self.store.owner(doc_id)
            if owner is None:
                return False
            if namespace is not None and owner != namespace:
                raise DocumentOwnershipError(f"document {doc_id!r} belongs to another namespace")
            removed = self.store.remove(doc_id)
            if removed:
                self.store.save()
            return removed

    def documents(self, namespaces: Collection[str] | None = None) -> list[dict[str, Any]]:
        return self.store.documents(namespaces)

    def document(self, doc_id: str, namespaces: Collection[str] | None = None) -> dict[str, Any]:
        owner = self.store.owner(doc_id)
        if owner is None or (namespaces is not None and owner not in namespaces):
            raise DocumentNotFoundError(f"no document {doc_id!r}")
        return next(d for d in self.store.documents([owner]) if d["id"] == doc_id)

    def embed_query(self, query: str) -> np.ndarray:
        return self.embedder.encode([query])[0]

    def search(
        self,
        query: str,
        k: int,
        *,
        mode: SearchMode = "dense",
        candidates: int = 20,
        rrf_k: int = 60,
        namespaces: Collection[str] | None = None,
    ) -> list[Passage]:
        """The top-k passages: by embedding (dense), by BM25, or both fused by reciprocal rank (hybrid,
        over the top ``candidates`` of each; a passage's score is then its fused score). Only chunks of
        ``namespaces`` (None: all) are candidates, in either ranking."""
        if mode == "bm25":
            return self.lexical.search(query, k, namespaces)
        if mode == "dense":
            return self.search_vectors(self.embedder.encode([query]), k, namespaces)[0]
        n = max(k, candidates)
        dense = self.search_vectors(self.embedder.encode([query]), n, namespaces)[0]
        return reciprocal_rank_fusion([dense, self.lexical.search(query, n, namespaces)], k, rrf_k)

    def search_vectors(
        self, vectors: np.ndarray, k: int, namespaces: Collection[str] | None = None
    ) -> list[list[Passage]]:
        return self.store.search(vectors, k, namespaces)

    def stats(self) -> dict[str, Any]:
        return {
            "documents": len(self.store.docs),
            "chunks": len(self.store),
            "generation": self.store.generation,
            "embedder": self.store.embedder_name,
        }
