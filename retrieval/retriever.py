"""The retriever: chunk, embed and index documents; embed queries and search."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from retrieval.chunking import Chunker
from retrieval.corpus_log import READ_COUNT, CorpusLog, LogEntry, LogMeta
from retrieval.documents import (
    CorpusStats,
    Document,
    DocumentRecord,
    DocumentSummary,
    IngestReport,
    Passage,
)
from retrieval.errors import (
    CorpusBusyError,
    CorpusLogError,
    DocumentFormatError,
    DocumentNotFoundError,
    DocumentOwnershipError,
    GenerationAheadError,
    GenerationLagError,
    IndexLockedError,
    IndexWriteError,
)
from retrieval.lexical import LexicalIndex, reciprocal_rank_fusion
from retrieval.store import VectorStore, document_record

if TYPE_CHECKING:
    from retrieval.embedder import Embedder

logger = logging.getLogger(__name__)

SearchMode = Literal["dense", "bm25", "hybrid"]


# Tries of a logged write whose check another writer's entry overtook, before the caller is told to retry.
APPEND_TRIES = 8
# Seconds between a follower's snapshot saves while entries keep coming (a save serialises the whole index).
SAVE_EVERY_S = 5.0
# Replica folders one index directory holds at most (log mode), and those this process's stores hold.
MAX_REPLICA_DIRS = 64
_REPLICA_DIRS: weakref.WeakValueDictionary[Path, VectorStore] = weakref.WeakValueDictionary()


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
        self._unsaved = False  # log mode: entries applied since the last snapshot
        self._saved_at = time.monotonic()
        if log is not None:
            self._join_log()

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
            store = _open_replica_dir(emb.dim, emb.name, Path(index_dir))
            _adopt_legacy_snapshot(store, Path(index_dir), lock_timeout_s)
        return cls(emb, store, Chunker(emb.tokenizer, chunk_tokens, chunk_overlap_tokens), log)

    @property
    def generation(self) -> int:
        """The corpus generation this replica has applied (what a response reports)."""
        return self.store.corpus_generation

    # -- writing -------------------------------------------------------------------------------
    def ingest(self, docs: list[Document]) -> IngestReport:
        """Index ``docs`` as one batch (all or nothing). A document whose id another namespace holds is
        refused with the whole batch (DocumentOwnershipError) before anything changes."""
        with self._ingest_lock:
            if self.log is None:
                return self._ingest_local(docs)
            return self._ingest_logged(docs)

    def _check(self, docs: list[Document]) -> tuple[IngestReport, list[Document]]:
        """The batch against the corpus as this replica holds it: what is unchanged, and what to index."""
        report = IngestReport()
        pending: list[Document] = []
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
            pending.append(doc)
        return report, pending

    def _embed(self, pending: list[Document]) -> tuple[list[DocumentRecord], np.ndarray]:
        records = [document_record(doc, self.chunker.split(doc)) for doc in pending]
        texts = [
            self._embed_text(doc, text) for doc, r in zip(pending, records, strict=True) for _, text in r["pieces"]
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
            self._upsert_all(records, vectors, report)
            if pending:
                self.store.corpus_generation += 1
                self.store.save()
        report.generation = self.store.corpus_generation
        return report

    def _ingest_logged(self, docs: list[Document]) -> IngestReport:
        assert self.log is not None
        embedded: dict[tuple[str, str], tuple[DocumentRecord, np.ndarray]] = {}
        for _ in range(APPEND_TRIES):
            self._catch_up_locked()
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
            entry = self._append(meta, rows)
            if entry is None:
                continue  # another writer's entry landed first: catch up and check the batch again
            self._apply_locked(entry, report)
            report.generation = entry.generation
            return report
        raise CorpusBusyError(f"the corpus log moved under this write {APPEND_TRIES} times running; send it again")

    def _append(self, meta: LogMeta, vectors: np.ndarray) -> LogEntry | None:
        assert self.log is not None
        entry = LogEntry(0, meta, vectors)
        generation = self.log.append(self.store.corpus_generation, *entry.encode())
        return None if generation is None else LogEntry(generation, meta, vectors)

    def _upsert_all(self, records: list[DocumentRecord], vectors: np.ndarray, report: IngestReport | None) -> None:
        offset = 0
        for record in records:
            n = len(record["pieces"])
            outcome = self.store.upsert_record(record, vectors[offset : offset + n])
            offset += n
            if report is not None and outcome != "unchanged":
                (report.added if outcome == "added" else report.updated).append(record["id"])
                report.chunks_added += n

    @staticmethod
    def _embed_text(doc: Document, text: str) -> str:
        # The title is part of what a chunk is about (HotpotQA paragraphs rarely repeat their subject).
        return f"{doc.title}\n{text}" if doc.title and not text.startswith(doc.title) else text

    def remove(self, doc_id: str, namespace: str | None = None) -> bool:
        """Remove a document (of ``namespace``, when given: another namespace's is refused, and one the
        caller cannot read is not found). False: there is no such document."""
        with self._ingest_lock:
            for _ in range(APPEND_TRIES):
                if self.log is not None:
                    self._catch_up_locked()
                owner = self.store.owner(doc_id)
                if owner is None:
                    return False
                if namespace is not None and owner != namespace:
                    raise DocumentOwnershipError(f"document {doc_id!r} belongs to another namespace")
                if self.log is None:
                    with self.store.transaction():
                        self.store.remove(doc_id)
                        self.store.corpus_generation += 1
                        self.store.save()
                    return True
                entry = self._append({"op": "remove", "id": doc_id}, np.zeros((0, self.store.dim), np.float32))
                if entry is not None:
                    self._apply_locked(entry, None)
                    return True
            raise CorpusBusyError(f"the corpus log moved under this removal {APPEND_TRIES} times running; try again")

    # -- following the log ---------------------------------------------------------------------
    def _join_log(self) -> None:
        """Before serving: make sure the local snapshot continues this log (else start over from the log, or,
        when the log is empty and the snapshot is not, publish the snapshot as the log's first entry), then
        catch up."""
        assert self.log is not None
        epoch = self.log.epoch()
        with self._ingest_lock:
            store = self.store
            head = self.log.head()
            if store.epoch == epoch and store.corpus_generation > head:
                logger.warning(
                    "index snapshot is at corpus generation %d but the log ends at %d (Redis lost entries): "
                    "rebuilding this replica from the log",
                    store.corpus_generation,
                    head,
                )
                store.clear()
            elif store.epoch != epoch and store.docs:
                if head == 0 and self._seed_locked():
                    logger.warning(
                        "the corpus log was empty: seeded it with this replica's %d documents", len(store.docs)
                    )
                else:
                    logger.warning(
                        "index snapshot (%d documents) does not come from the corpus log %s: rebuilding from the log",
                        len(store.docs),
                        epoch,
                    )
                    store.clear()
            elif store.epoch != epoch:
                store.clear()
            store.epoch = epoch
            self._catch_up_locked()
            self._save_locked()

    def _seed_locked(self) -> bool:
        records, vectors = self.store.records()
        meta: LogMeta = {"op": "upsert", "embedder": self.store.embedder_name, "docs": records, "seed": True}
        assert self.log is not None
        generation = self.log.append(0, *LogEntry(0, meta, vectors).encode())
        if generation is None:
            return False
        self.store.corpus_generation = generation
        self._unsaved = True
        return True

    def catch_up(self, at_least: int | None = None) -> int:
        """Apply what the log holds beyond this replica's generation (with ``at_least``: only when behind it),
        and return the generation. A generation no write has reached is a GenerationAheadError."""
        if at_least is not None and self.store.corpus_generation >= at_least:
            return self.store.corpus_generation
        if self.log is not None:
            with self._ingest_lock:
                self._catch_up_locked()
        if at_least is not None and self.store.corpus_generation < at_least:
            head = self.log.head() if self.log is not None else self.store.corpus_generation
            if at_least > head:
                raise GenerationAheadError(f"corpus generation {at_least} does not exist yet (the newest is {head})")
            raise GenerationLagError(f"this replica could not reach corpus generation {at_least}; try again")
        return self.store.corpus_generation

    def _catch_up_locked(self) -> None:
        assert self.log is not None
        while True:
            rows = self.log.read(self.store.corpus_generation)
            self._apply_rows_locked(rows)
            if len(rows) < READ_COUNT:
                return

    def _apply_rows_locked(self, rows: list[tuple[int, bytes, bytes]]) -> None:
        for generation, meta, vectors in rows:
            if generation <= self.store.corpus_generation:
                continue  # this replica wrote it, or a catch-up got there first
            self._apply_locked(LogEntry.decode(generation, meta, vectors, self.store.dim), None)

    def _apply_locked(self, entry: LogEntry, report: IngestReport | None) -> None:
        if entry.generation != self.store.corpus_generation + 1:
            raise CorpusLogError(
                f"corpus log entry {entry.generation} follows generation {self.store.corpus_generation}: a gap"
            )
        meta = entry.meta
        with self.store.transaction():
            if meta.get("op") == "upsert":
                if meta.get("embedder") != self.store.embedder_name:
                    raise CorpusLogError(
                        f"corpus log entry {entry.generation} was embedded by {meta.get('embedder')}; this replica "
                        f"embeds with {self.store.embedder_name}"
                    )
                records = meta["docs"]
                for record in records:
                    owner = self.store.owner(record["id"])
                    if owner is not None and owner != record["namespace"]:
                        # Writers check against the head they append at, so this cannot happen; refuse loudly.
                        raise CorpusLogError(
                            f"corpus log entry {entry.generation} moves {record['id']!r} across namespaces"
                        )
                self._upsert_all(records, entry.vectors, report)
            elif meta.get("op") == "remove":
                if self.store.owner(meta["id"]) is not None:
                    self.store.remove(meta["id"])
            else:
                raise CorpusLogError(f"corpus log entry {entry.generation} has an unknown op {meta.get('op')!r}")
            self.store.corpus_generation = entry.generation
        self._unsaved = True

    def follow(self, stop: threading.Event, *, block_s: float = 1.0) -> None:
        """Apply other writers' entries as they land, until ``stop`` is set; save the snapshot when the log
        goes quiet, or every SAVE_EVERY_S while it does not. Runs on a thread of its own (the service's)."""
        assert self.log is not None
        failing = False
        while not stop.is_set():
            try:
                rows = self.log.read(self.store.corpus_generation, block_s=block_s)
                if rows:
                    with self._ingest_lock:
                        self._apply_rows_locked(rows)
                if self._unsaved and (not rows or time.monotonic() - self._saved_at > SAVE_EVERY_S):
                    with self._ingest_lock:
                        self._save_locked()
                if failing:
                    logger.info("corpus log: following again at generation %d", self.store.corpus_generation)
                failing = False
            except Exception as exc:  # noqa: BLE001 - the follower outlives a Redis outage
                if not failing:
                    logger.warning("corpus log: cannot follow (%s); retrying every second", exc)
                failing = True
                stop.wait(1.0)

    def _save_locked(self) -> None:
        if not self._unsaved:
            return
        try:
            self.store.save()
        except IndexWriteError as exc:
            logger.warning("corpus generation %d applied but not saved locally: %s", self.store.corpus_generation, exc)
            return
        self._unsaved = False
        self._saved_at = time.monotonic()

    def documents(self, namespaces: Collection[str] | None = None) -> list[DocumentSummary]:
        return self.store.documents(namespaces)

    def document(self, doc_id: str, namespaces: Collection[str] | None = None) -> DocumentSummary:
        owner = self.store.owner(doc_id)
        if owner is None or (namespaces is not None and owner not in namespaces):
            raise DocumentNotFoundError(f"no document {doc_id!r}")
        return next(d for d in self.store.documents([owner]) if d["id"] == doc_id)

    def chunk_bodies(self, doc_ids: Collection[str] | None = None) -> list[str]:
        """Each chunk of these documents (None: every document) as a prompt shows it after its number: what
        an engine's chunk-KV cache computes ahead of the first question about it."""
        from retrieval.prompts import passage_body

        store = self.store
        with store._lock:
            ids = list(store.docs) if doc_ids is None else [d for d in doc_ids if d in store.docs]
            chunks = [store.chunks[c] for d in ids for c in store.docs[d]["chunk_ids"] if c in store.chunks]
        return [passage_body(Passage(chunk=c, score=0.0)) for c in chunks]

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


def _adopt_legacy_snapshot(store: VectorStore, root: Path, lock_timeout_s: float) -> None:
    """An index directory from before the corpus log holds its snapshot at its root: an empty replica folder
    takes that snapshot's documents (and joining the log then seeds an empty log with them)."""
    if store.docs or store.epoch is not None or not (root / "CURRENT").exists():
        return
    legacy = VectorStore.open(store.dim, store.embedder_name, root, lock_timeout_s=lock_timeout_s)
    try:
        records, vectors = legacy.records()
    finally:
        legacy.close()
    offset = 0
    for record in records:
        n = len(record["pieces"])
        store.upsert_record(record, vectors[offset : offset + n])
        offset += n
    logger.info("took %d documents from the index snapshot at %s (from before the corpus log)", len(records), root)


def _open_replica_dir(dim: int, embedder_name: str, root: Path) -> VectorStore:
    """Log mode: this replica's own snapshot folder under ``root``, the first ``replica-N`` no other process
    holds (so replicas on one host share the directory, and one that restarts finds a snapshot to continue)."""
    for n in range(MAX_REPLICA_DIRS):
        path = root / f"replica-{n}"
        held = _REPLICA_DIRS.get(path)
        if held is not None and held.holds_lock:
            continue  # this process's own (the file lock counts per process, so it would let a second in)
        try:
            store = VectorStore.open(dim, embedder_name, path, lock_timeout_s=0)
        except IndexLockedError:
            continue
        _REPLICA_DIRS[path] = store
        return store
    raise IndexLockedError(f"all {MAX_REPLICA_DIRS} replica folders under {root} are held by other processes")
