"""The retriever: chunk, embed and index documents (through the corpus log when there is one: `retrieval/replica.py`);
embed queries and search."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from core.chunks import PromptChunk
from retrieval.chunking import Chunker
from retrieval.corpus_log import CorpusLog, LogMeta
from retrieval.documents import (
    CorpusStats,
    DocKey,
    Document,
    DocumentRecord,
    DocumentSummary,
    IngestReport,
    Passage,
    chunk_heading,
)
from retrieval.errors import (
    AmbiguousDocumentError,
    CorpusBusyError,
    DocumentFormatError,
    DocumentNotFoundError,
    GenerationAheadError,
    GenerationLagError,
)
from retrieval.lexical import LexicalIndex, reciprocal_rank_fusion
from retrieval.replica import LogReplica, open_replica_store, upsert_records
from retrieval.store import VectorStore, document_record

if TYPE_CHECKING:
    from retrieval.embedder import Embedder

logger = logging.getLogger(__name__)

SearchMode = Literal["dense", "bm25", "hybrid"]


# Tries of a logged write whose check another writer's entry overtook, before the caller is told to retry.
APPEND_TRIES = 8


class Retriever:
    """Chunks, embeds, indexes and searches documents.

    With a corpus log (``log``) the log is the store of record and this retriever one of its replicas: a write
    checks the batch against the corpus at the log's head, appends it (acknowledged once durable there) and
    applies it here; `follow` applies everyone else's entries as they land; the local snapshot is a cache that
    makes a restart quick. Without one, the local snapshot is the record (one writer per index directory)."""

    def __init__(self, embedder: Embedder, store: VectorStore, chunker: Chunker, log: CorpusLog | None = None) -> None:
        self.embedder = embedder
        self.store = store
        self.chunker = chunker
        self.log = log
        # Writes and applied log entries are serialised: two uploads of one document cannot both add it, and
        # an entry is applied once, in order.
        self._ingest_lock = threading.Lock()
        self.lexical = LexicalIndex(store)
        self.replica = LogReplica(store, log, self._ingest_lock) if log is not None else None
        if self.replica is not None:
            self.replica.join()

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
        log: CorpusLog | None = None,
    ) -> Retriever:
        from retrieval.embedder import Embedder

        emb = embedder or Embedder(embedder_path, device=device, batch_size=batch_size)
        if index_dir is None:
            store = VectorStore(emb.dim, emb.name)
        elif log is None:
            store = VectorStore.open(emb.dim, emb.name, index_dir, lock_timeout_s=lock_timeout_s)
        else:
            store = open_replica_store(emb.dim, emb.name, Path(index_dir), lock_timeout_s)
        return cls(emb, store, Chunker(emb.tokenizer, chunk_tokens, chunk_overlap_tokens), log)

    @property
    def generation(self) -> int:
        """The corpus generation this replica has applied (what a response reports)."""
        return self.store.corpus_generation

    # -- writing -------------------------------------------------------------------------------
    def ingest(self, docs: list[Document]) -> IngestReport:
        """Index ``docs`` as one batch (all or nothing), each in its own namespace: an id is scoped to its
        namespace, so a document never replaces (or reveals) another namespace's of the same id."""
        with self._ingest_lock:
            if self.log is None:
                return self._ingest_local(docs)
            return self._ingest_logged(docs)

    def _check(self, docs: list[Document]) -> tuple[IngestReport, list[Document]]:
        """The batch against the corpus as this replica holds it: what is unchanged, and what to index."""
        report = IngestReport()
        pending: list[Document] = []
        seen: dict[tuple[str, str], str] = {}  # (namespace, id) -> fingerprint, in this batch
        for doc in docs:
            if not doc.text.strip():
                raise DocumentFormatError(f"document {doc.id!r} has no text")
            key = (doc.namespace, doc.id)
            if key in seen:
                # One rule for every format: the same document twice is taken once; two under one id are refused.
                if seen[key] != doc.fingerprint:
                    raise DocumentFormatError(
                        f"document id {doc.id!r} is given twice in the batch, with different text"
                    )
                continue
            seen[key] = doc.fingerprint
            if self.store.holds(doc.namespace, doc.id, doc.fingerprint, self.chunker.signature):
                report.unchanged.append(doc.id)
                continue
            pending.append(doc)
        return report, pending

    def _embed(self, pending: list[Document]) -> tuple[list[DocumentRecord], np.ndarray]:
        records = []
        for doc in pending:
            pieces = self.chunker.split(doc)
            sections = self.chunker.sections(doc, pieces)
            records.append(document_record(doc, pieces, sections=sections, chunking=self.chunker.signature))
        texts = [
            self._embed_text(doc.title, section, text)
            for doc, r in zip(pending, records, strict=True)
            for (_, text), section in zip(r["pieces"], r["sections"], strict=True)
        ]
        vectors = self.embedder.encode(texts) if texts else np.zeros((0, self.store.dim), dtype=np.float32)
        return records, np.asarray(vectors, dtype=np.float32)

    def _ingest_local(self, docs: list[Document]) -> IngestReport:
        report, pending = self._check(docs)
        # All chunks of the batch are embedded before the index changes: a failure leaves it as it was.
        records, vectors = self._embed(pending)
        # The batch is one transaction: a failing upsert or save undoes the batch's changes in memory, and
        # the snapshot on disk is still the one before it.
        with self.store.transaction():
            upsert_records(self.store, records, vectors, report)
            if pending:
                self.store.corpus_generation += 1
                self.store.save()
        report.generation = self.store.corpus_generation
        return report

    def _ingest_logged(self, docs: list[Document]) -> IngestReport:
        replica = self.replica
        assert replica is not None
        embedded: dict[tuple[str, str], tuple[DocumentRecord, np.ndarray]] = {}
        for _ in range(APPEND_TRIES):
            replica.catch_up_locked()
            report, pending = self._check(docs)
            if not pending:
                report.generation = self.store.corpus_generation
                return report
            todo = [d for d in pending if (d.id, d.fingerprint) not in embedded]
            records, vectors = self._embed(todo)
            offset = 0
            for doc, record in zip(todo, records, strict=True):
                n = len(record["pieces"])
                embedded[(doc.id, doc.fingerprint)] = (record, vectors[offset : offset + n])
                offset += n
            batch = [embedded[(d.id, d.fingerprint)] for d in pending]
            meta: LogMeta = {"op": "upsert", "embedder": self.store.embedder_name, "docs": [r for r, _ in batch]}
            rows = np.vstack([v for _, v in batch]) if batch else np.zeros((0, self.store.dim), np.float32)
            entry = replica.append_locked(meta, rows)
            if entry is None:
                continue  # another writer's entry landed first: catch up and check the batch again
            replica.apply_locked(entry, report)
            report.generation = entry.generation
            return report
        raise CorpusBusyError(f"the corpus log moved under this write {APPEND_TRIES} times running; send it again")

    @staticmethod
    def _embed_text(title: str, section: str, text: str) -> str:
        # The title is part of what a chunk is about (HotpotQA paragraphs rarely repeat their subject), and so
        # are the headings it sits under in a long document.
        heading = chunk_heading(title, section)
        return f"{heading}\n{text}" if heading and not text.startswith(heading) else text

    def remove(self, doc_id: str, namespace: str | None = None) -> bool:
        """Remove the document ``doc_id`` of ``namespace`` (None: of the one namespace that holds that id; an
        id several hold is an AmbiguousDocumentError). False: there is no such document."""
        with self._ingest_lock:
            for _ in range(APPEND_TRIES):
                if self.replica is not None:
                    self.replica.catch_up_locked()
                ns = namespace if namespace is not None else self._only_holder(doc_id)
                if ns is None or self.store.fingerprint(ns, doc_id) is None:
                    return False
                if self.replica is None:
                    with self.store.transaction():
                        self.store.remove(ns, doc_id)
                        self.store.corpus_generation += 1
                        self.store.save()
                    return True
                removal: LogMeta = {"op": "remove", "id": doc_id, "namespace": ns}
                entry = self.replica.append_locked(removal, np.zeros((0, self.store.dim), np.float32))
                if entry is not None:
                    self.replica.apply_locked(entry, None)
                    return True
            raise CorpusBusyError(f"the corpus log moved under this removal {APPEND_TRIES} times running; try again")

    # -- following the log ---------------------------------------------------------------------
    def catch_up(self, at_least: int | None = None) -> int:
        """Apply what the log holds beyond this replica's generation (with ``at_least``: only when behind it),
        and return the generation. A generation no write has reached is a GenerationAheadError."""
        if at_least is not None and self.store.corpus_generation >= at_least:
            return self.store.corpus_generation
        if self.replica is not None:
            with self._ingest_lock:
                self.replica.catch_up_locked()
        if at_least is not None and self.store.corpus_generation < at_least:
            head = self.log.head() if self.log is not None else self.store.corpus_generation
            if at_least > head:
                # Not the newest generation: that counts every namespace's writes, which is no caller's business.
                raise GenerationAheadError(
                    f"corpus generation {at_least} does not exist yet; send the generation a write of yours returned"
                )
            raise GenerationLagError(f"this replica could not reach corpus generation {at_least}; try again")
        return self.store.corpus_generation

    def follow(self, stop: threading.Event, *, block_s: float = 1.0) -> None:
        """Apply other writers' entries as they land, until ``stop`` is set (`LogReplica.follow`)."""
        assert self.replica is not None
        self.replica.follow(stop, block_s=block_s)

    # -- reading -------------------------------------------------------------------------------
    def documents(self, namespaces: Collection[str] | None = None) -> list[DocumentSummary]:
        return self.store.documents(namespaces)

    def _only_holder(self, doc_id: str) -> str | None:
        holders = self.store.holders(doc_id)
        if len(holders) > 1:
            raise AmbiguousDocumentError(
                f"document id {doc_id!r} is held by {len(holders)} namespaces ({', '.join(holders)}): name one"
            )
        return holders[0] if holders else None

    def document(self, doc_id: str, namespaces: Collection[str] | None = None) -> DocumentSummary:
        """The document ``doc_id`` in the first of ``namespaces`` (in their order) that holds one; None: in
        whichever holds it, the shared namespace first."""
        candidates = self.store.holders(doc_id) if namespaces is None else list(namespaces)
        for ns in candidates:
            found = self.store.summary(ns, doc_id)
            if found is not None:
                return found
        raise DocumentNotFoundError(f"no document {doc_id!r}")

    def chunk_bodies(self, keys: Collection[DocKey] | None = None) -> list[PromptChunk]:
        """Each chunk of these documents, by (namespace, id) (None: every document), as a prompt shows it after
        its number, with its namespace: what an engine's chunk-KV cache computes ahead of the first question."""
        from retrieval.prompts import prompt_chunks

        store = self.store
        with store._lock:
            held = list(store.docs) if keys is None else [k for k in keys if k in store.docs]
            chunks = [store.chunks[c] for k in held for c in store.docs[k]["chunk_ids"] if c in store.chunks]
        return prompt_chunks([Passage(chunk=c, score=0.0) for c in chunks])

    def fingerprints(self, keys: list[DocKey]) -> list[str | None]:
        """Each document's fingerprint, by (namespace, id); None for one no longer held (what a cached answer's
        sources are checked against)."""
        return self.store.fingerprints(keys)

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

    def stats(self) -> CorpusStats:
        return {
            "documents": len(self.store.docs),
            "chunks": len(self.store),
            "generation": self.store.corpus_generation,
            "embedder": self.store.embedder_name,
            "corpus_log": self.log is not None,
        }
