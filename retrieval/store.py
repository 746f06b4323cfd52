"""The FAISS index and the documents and chunks beside it: searches by namespace, changes inside an undoable
transaction, and (with a directory) saves as atomic snapshots (`retrieval.snapshots`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retrieval.documents import (
    SHARED_NAMESPACE,
    Chunk,
    DocKey,
    Document,
    DocumentRecord,
    DocumentSummary,
    FlaggedChunk,
    Passage,
    StoredDocument,
)
from retrieval.formats import page_of
from retrieval.screening import screen
from retrieval.snapshots import Snapshot, SnapshotDir

logger = logging.getLogger(__name__)

UpsertOutcome = Literal["added", "updated", "unchanged"]


def document_record(
    doc: Document, pieces: list[tuple[int, str]], *, sections: list[str] | None = None, chunking: str = ""
) -> DocumentRecord:
    """A document as the store (and the corpus log) keeps it: its fields, its chunks' (start, text) and, when
    given, each chunk's section and how they were cut (`retrieval.chunking.Chunker`)."""
    record: DocumentRecord = {
        "id": doc.id,
        "namespace": doc.namespace,
        "fingerprint": doc.fingerprint,
        "title": doc.title,
        "source": doc.source,
        "metadata": doc.metadata,
        "pieces": [(int(start), text) for start, text in pieces],
    }
    if doc.page_starts:
        record["page_starts"] = list(doc.page_starts)
    if sections is not None:
        if len(sections) != len(pieces):
            raise ValueError("one section per chunk is required")
        record["sections"] = list(sections)
    if chunking:
        record["chunking"] = chunking
    return record


class VectorStore:
    def __init__(self, dim: int, embedder_name: str, directory: str | Path | None = None) -> None:
        import faiss

        self.dim = dim
        self.embedder_name = embedder_name
        self.directory = Path(directory) if directory else None
        self.index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.docs: dict[DocKey, StoredDocument] = {}
        self.chunks: dict[int, Chunk] = {}
        self.next_chunk_id = 0
        # Two counters. `generation` moves on every change in memory (undone ones too): what is derived from
        # the content (the BM25 index, the namespace bitmaps) is rebuilt when it moves. `corpus_generation`
        # counts committed batches: the corpus log's entry number when a log is the store of record, else
        # this store's own count; it is what responses carry and what a request may ask to have reached.
        self.generation = 0
        self.corpus_generation = 0
        # The corpus log this store follows (its epoch), when one is the store of record.
        self.epoch: str | None = None
        self._lock = threading.RLock()
        # Inside `transaction()`: how to undo each change made so far, newest last.
        self._undo: list[Callable[[], None]] | None = None
        self._gpu_index: Any = None
        self._use_gpu = faiss.get_num_gpus() > 0
        # The readable chunks of a set of namespaces, as a bitmap over chunk ids, for the generation it
        # was built at.
        self._bitmaps: dict[frozenset[str], tuple[int, np.ndarray, int]] = {}
        # The directory's snapshots and its writer lock (held from `open` to `close`), when there is one.
        self.snapshots = SnapshotDir(self.directory, dim, embedder_name) if self.directory else None

    # -- queries -------------------------------------------------------------------------------
    def fingerprint(self, namespace: str, doc_id: str) -> str | None:
        entry = self.docs.get((namespace, doc_id))
        return None if entry is None else str(entry["fingerprint"])

    def holds(self, namespace: str, doc_id: str, fingerprint: str, chunking: str) -> bool:
        """Whether this document is stored with this text, cut this way: nothing to index again."""
        entry = self.docs.get((namespace, doc_id))
        return entry is not None and entry["fingerprint"] == fingerprint and entry.get("chunking", "") == chunking

    def holders(self, doc_id: str) -> list[str]:
        """The namespaces that hold a document with this id, the shared one first, then by name."""
        with self._lock:
            found = [ns for ns, i in self.docs if i == doc_id]
        return sorted(found, key=lambda ns: (ns != SHARED_NAMESPACE, ns))

    def documents(self, namespaces: Collection[str] | None = None) -> list[DocumentSummary]:
        """The stored documents (of ``namespaces``; None: all), by id, then namespace."""
        with self._lock:
            keys = sorted(self.docs, key=lambda k: (k[1], k[0]))
            return [self._summary(k) for k in keys if namespaces is None or k[0] in namespaces]

    def fingerprints(self, keys: list[DocKey]) -> list[str | None]:
        """Each document's fingerprint now, by (namespace, id); None for one this store does not hold."""
        with self._lock:
            return [self.fingerprint(ns, doc_id) for ns, doc_id in keys]

    def chunk_vectors(self, keys: list[tuple[str, str, int]]) -> list[list[float] | None]:
        """The stored vectors of chunks by (namespace, document id, chunk index); None for one not held. By
        document and index, not chunk id: replicas number their chunks each on its own."""
        with self._lock:
            out: list[list[float] | None] = []
            for ns, doc_id, index in keys:
                entry = self.docs.get((ns, doc_id))
                ids = entry["chunk_ids"] if entry is not None else []
                out.append(self.index.reconstruct(int(ids[index])).tolist() if 0 <= index < len(ids) else None)
            return out

    def summary(self, namespace: str, doc_id: str) -> DocumentSummary | None:
        """One stored document as the documents API shows it (None: there is none)."""
        with self._lock:
            return self._summary((namespace, doc_id)) if (namespace, doc_id) in self.docs else None

    def _summary(self, key: DocKey) -> DocumentSummary:
        entry = self.docs[key]
        return {
            "id": key[1],
            "namespace": key[0],
            "title": entry["title"],
            "source": entry["source"],
            "metadata": entry["metadata"],
            "chunks": len(entry["chunk_ids"]),
            "flagged": list(entry.get("flagged", [])),
        }

    def __len__(self) -> int:
        return len(self.chunks)

    def _search_index(self) -> Any:
        if not self._use_gpu:
            return self.index
        if self._gpu_index is None:
            import faiss

            # A flat index copies to the GPU whole; it is rebuilt lazily after each change.
            self._gpu_index = faiss.index_cpu_to_all_gpus(self.index)
        return self._gpu_index

    def search(self, vectors: np.ndarray, k: int, namespaces: Collection[str] | None = None) -> list[list[Passage]]:
        """The top-k chunks for each vector, among the chunks of ``namespaces`` (None: every chunk). The
        filter runs inside FAISS (an id bitmap as the search's selector), so k readable chunks come back
        whenever there are k, however many others there are."""
        import faiss

        with self._lock:
            if not self.chunks or len(vectors) == 0:
                return [[] for _ in range(len(vectors))]
            queries = np.ascontiguousarray(vectors, dtype=np.float32)
            if namespaces is None:
                k = min(k, len(self.chunks))
                scores, ids = self._search_index().search(queries, k)
            else:
                bitmap, readable = self._bitmap(frozenset(namespaces))
                k = min(k, readable)
                if k == 0:
                    return [[] for _ in range(len(vectors))]
                selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
                # The CPU index: GPU flat indexes take no selector.
                params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]  # SWIG takes keywords
                scores, ids = self.index.search(queries, k, params=params)
            return [
                [Passage(self.chunks[int(i)], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
                for row_s, row_i in zip(scores, ids, strict=True)
            ]

    def _bitmap(self, namespaces: frozenset[str]) -> tuple[np.ndarray, int]:
        """A bitmap over chunk ids (bit i of byte i // 8, little-endian, as FAISS reads it) of the chunks
        in ``namespaces``, and how many there are; rebuilt when the generation moves."""
        cached = self._bitmaps.get(namespaces)
        if cached is not None and cached[0] == self.generation:
            return cached[1], cached[2]
        ids = np.fromiter((cid for cid, c in self.chunks.items() if c.namespace in namespaces), dtype=np.int64)
        bits = np.zeros(max(self.next_chunk_id, 1), dtype=bool)
        bits[ids] = True
        bitmap = np.packbits(bits, bitorder="little")
        if len(self._bitmaps) > 256:  # one entry per tenant (and the shared set) in practice; bounded anyway
            self._bitmaps.clear()
        self._bitmaps[namespaces] = (self.generation, bitmap, len(ids))
        return bitmap, len(ids)

    # -- changes -------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes made inside (upserts, removals, the save) are all kept, or, when anything inside raises,
        all undone, so memory keeps agreeing with what is on disk. Holds the store's lock throughout.

        Undo is a log of inverse steps rather than a copy of the index: a copy of a flat index costs its
        whole size per batch, the log only what the batch touched. The generation still moves on after an
        undo (the content is the old one, under a new number), so nothing derived from a generation seen
        mid-batch (the BM25 index, a cached answer) is mistaken for current."""
        with self._lock:
            if self._undo is not None:  # nested: the outer transaction decides
                yield
                return
            self._undo = []
            next_id, committed = self.next_chunk_id, self.corpus_generation
            try:
                yield
            except BaseException:
                undo, self._undo = self._undo, None  # the undo steps themselves are not logged
                for step in reversed(undo):
                    step()
                self.next_chunk_id, self.corpus_generation = next_id, committed
                self.generation += 1
                self._gpu_index = None
                raise
            finally:
                self._undo = None

    def upsert(self, doc: Document, pieces: list[tuple[int, str]], vectors: np.ndarray) -> UpsertOutcome:
        return self.upsert_record(document_record(doc, pieces), vectors)

    def upsert_record(self, record: DocumentRecord, vectors: np.ndarray) -> UpsertOutcome:
        """Add or replace one document given as a `document_record` (what the corpus log carries)."""
        pieces = record["pieces"]
        doc_id, namespace, title, source = record["id"], record["namespace"], record["title"], record["source"]
        if len(pieces) != len(vectors):
            raise ValueError("one vector per chunk is required")
        key = (namespace, doc_id)
        with self._lock:
            old = self.fingerprint(namespace, doc_id)
            if self.holds(namespace, doc_id, record["fingerprint"], record.get("chunking", "")):
                return "unchanged"
            if old is not None:
                self._remove_locked(key)
            ids = np.arange(self.next_chunk_id, self.next_chunk_id + len(pieces), dtype=np.int64)
            self.next_chunk_id += len(pieces)
            if len(pieces):
                self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            page_starts = record.get("page_starts") or []
            sections = record.get("sections") or [""] * len(pieces)
            for n, (cid, (start, text)) in enumerate(zip(ids.tolist(), pieces, strict=True)):
                page = page_of(page_starts, int(start)) if page_starts else 0
                self.chunks[cid] = Chunk(
                    cid, doc_id, title, text, n, int(start), source, namespace, page, record["fingerprint"], sections[n]
                )
            self.docs[key] = {
                "id": doc_id,
                "namespace": namespace,
                "fingerprint": record["fingerprint"],
                "title": title,
                "source": source,
                "metadata": record["metadata"],
                "chunk_ids": ids.tolist(),
            }
            if page_starts:
                self.docs[key]["page_starts"] = list(page_starts)
            if record.get("chunking"):
                self.docs[key]["chunking"] = record["chunking"]
            # Screened once, here, so every replica applying the record flags the same chunks.
            flagged: list[FlaggedChunk] = [
                {"chunk": n, "rules": rules} for n, (_, text) in enumerate(pieces) if (rules := screen(text))
            ]
            if flagged:
                self.docs[key]["flagged"] = flagged
            if self._undo is not None:
                self._undo.append(lambda: self._remove_locked(key))
            self.generation += 1
            self._gpu_index = None
            return "added" if old is None else "updated"

    def records(self) -> tuple[list[DocumentRecord], np.ndarray]:
        """Every document as a `document_record`, and their chunks' vectors in the same order (what seeding
        an empty corpus log from this store writes)."""
        with self._lock:
            out: list[DocumentRecord] = []
            rows = []
            for key in sorted(self.docs):
                entry = self.docs[key]
                ids = [int(i) for i in entry["chunk_ids"]]
                record: DocumentRecord = {
                    "id": key[1],
                    "namespace": key[0],
                    "fingerprint": entry["fingerprint"],
                    "title": entry["title"],
                    "source": entry["source"],
                    "metadata": entry["metadata"],
                    "pieces": [(self.chunks[i].start, self.chunks[i].text) for i in ids],
                }
                if entry.get("page_starts"):
                    record["page_starts"] = list(entry["page_starts"])
                out.append(record)
                rows += [self.index.reconstruct(i) for i in ids]
            vectors = np.vstack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), dtype=np.float32)
            return out, vectors

    def clear(self) -> None:
        """Forget every document (a replica whose snapshot came from another corpus log starts over)."""
        import faiss

        with self._lock:
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            self.docs, self.chunks = {}, {}
            self.next_chunk_id = 0
            self.corpus_generation = 0
            self.epoch = None
            self.generation += 1
            self._gpu_index = None
            self._bitmaps.clear()

    def remove(self, namespace: str, doc_id: str) -> bool:
        key = (namespace, doc_id)
        with self._lock:
            if key not in self.docs:
                return False
            self._remove_locked(key)
            self.generation += 1
            self._gpu_index = None
            return True

    def _remove_locked(self, key: DocKey) -> None:
        entry = self.docs.pop(key)
        ids = np.asarray(entry["chunk_ids"], dtype=np.int64)
        if self._undo is not None:
            # What it takes to put the document back: its entry, its chunks and their vectors.
            vectors = np.vstack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else None
            chunks = {int(cid): self.chunks[int(cid)] for cid in entry["chunk_ids"] if int(cid) in self.chunks}
            self._undo.append(lambda: self._restore_locked(key, entry, ids, vectors, chunks))
        self.index.remove_ids(ids)
        for cid in entry["chunk_ids"]:
            self.chunks.pop(int(cid), None)

    def _restore_locked(
        self, key: DocKey, entry: StoredDocument, ids: np.ndarray, vectors: np.ndarray | None, chunks: dict[int, Chunk]
    ) -> None:
        if vectors is not None:
            self.index.add_with_ids(vectors, ids)
        self.chunks.update(chunks)
        self.docs[key] = entry

    # -- persistence (the directory's snapshots and writer lock: `retrieval.snapshots`) -------------
    def save(self) -> Path | None:
        """Write the state as a new snapshot (`SnapshotDir.write`: atomic, or an IndexWriteError and nothing
        changed on disk)."""
        if self.snapshots is None:
            return None
        with self._lock:
            return self.snapshots.write(
                Snapshot(
                    index=self.index,
                    docs=self.docs,
                    chunks=self.chunks,
                    next_chunk_id=self.next_chunk_id,
                    generation=self.generation,
                    corpus_generation=self.corpus_generation,
                    epoch=self.epoch,
                )
            )

    @property
    def holds_lock(self) -> bool:
        """Whether this store holds its directory's writer lock (from `open` until `close`)."""
        return self.snapshots is not None and self.snapshots.locked

    def close(self) -> None:
        """Let go of the writer lock (the process's last store of this directory releases it)."""
        if self.snapshots is not None:
            self.snapshots.release()

    @classmethod
    def open(cls, dim: int, embedder_name: str, directory: str | Path, *, lock_timeout_s: float = 10.0) -> VectorStore:
        """Take the directory's writer lock, tidy what an unfinished save left, then load the snapshot
        ``CURRENT`` names (or start empty when there is none)."""
        store = cls(dim, embedder_name, directory)
        assert store.snapshots is not None
        store.snapshots.lock(lock_timeout_s)
        try:
            store.snapshots.prune_leftovers()
            snap = store.snapshots.read()
        except BaseException:
            store.close()
            raise
        if snap is not None:
            store.index, store.docs, store.chunks = snap.index, snap.docs, snap.chunks
            store.next_chunk_id = snap.next_chunk_id
            store.generation, store.corpus_generation, store.epoch = snap.generation, snap.corpus_generation, snap.epoch
        return store
