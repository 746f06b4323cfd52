"""FAISS index plus doc store, persisted together as atomic snapshots.

Each save writes a complete new snapshot folder (index, doc store, manifest last), fsyncs it, then
swaps the one-line ``CURRENT`` pointer with ``os.replace``. A crash at any point leaves the previous
snapshot named by ``CURRENT`` intact and readable. Two snapshots are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retrieval.documents import Chunk, Document, Passage
from retrieval.errors import IndexStateError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KEEP_SNAPSHOTS = 2

UpsertOutcome = Literal["added", "updated", "unchanged"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class VectorStore:
    def __init__(self, dim: int, embedder_name: str, directory: str | Path | None = None) -> None:
        import faiss

        self.dim = dim
        self.embedder_name = embedder_name
        self.directory = Path(directory) if directory else None
        self.index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.docs: dict[str, dict[str, Any]] = {}
        self.chunks: dict[int, Chunk] = {}
        self.next_chunk_id = 0
        self.generation = 0
        self._lock = threading.RLock()
        # Inside `transaction()`: how to undo each change made so far, newest last.
        self._undo: list[Callable[[], None]] | None = None
        self._gpu_index: Any = None
        self._use_gpu = faiss.get_num_gpus() > 0

    # -- queries -------------------------------------------------------------------------------
    def fingerprint(self, doc_id: str) -> str | None:
        entry = self.docs.get(doc_id)
        return None if entry is None else str(entry["fingerprint"])

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

    def search(self, vectors: np.ndarray, k: int) -> list[list[Passage]]:
        with self._lock:
            if not self.chunks or len(vectors) == 0:
                return [[] for _ in range(len(vectors))]
            k = min(k, len(self.chunks))
            scores, ids = self._search_index().search(np.ascontiguousarray(vectors, dtype=np.float32), k)
            return [
                [Passage(self.chunks[int(i)], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
                for row_s, row_i in zip(scores, ids, strict=True)
            ]

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
            next_id = self.next_chunk_id
            try:
                yield
            except BaseException:
                undo, self._undo = self._undo, None  # the undo steps themselves are not logged
                for step in reversed(undo):
                    step()
                self.next_chunk_id = next_id
                self.generation += 1
                self._gpu_index = None
                raise
            finally:
                self._undo = None

    def upsert(self, doc: Document, pieces: list[tuple[int, str]], vectors: np.ndarray) -> UpsertOutcome:
        if len(pieces) != len(vectors):
            raise ValueError("one vector per chunk is required")
        with self._lock:
            old = self.fingerprint(doc.id)
            if old == doc.fingerprint:
                return "unchanged"
            if old is not None:
                self._remove_locked(doc.id)
            ids = np.arange(self.next_chunk_id, self.next_chunk_id + len(pieces), dtype=np.int64)
            self.next_chunk_id += len(pieces)
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            for n, (cid, (start, text)) in enumerate(zip(ids.tolist(), pieces, strict=True)):
                self.chunks[cid] = Chunk(cid, doc.id, doc.title, text, n, start, doc.source)
            self.docs[doc.id] = {
                "fingerprint": doc.fingerprint,
                "title": doc.title,
                "source": doc.source,
                "metadata": doc.metadata,
                "chunk_ids": ids.tolist(),
            }
            if self._undo is not None:
                self._undo.append(lambda: self._remove_locked(doc.id))
            self.generation += 1
            self._gpu_index = None
            return "added" if old is None else "updated"

    def remove(self, doc_id: str) -> bool:
        with self._lock:
            if doc_id not in self.docs:
                return False
            self._remove_locked(doc_id)
            self.generation += 1
            self._gpu_index = None
            return True

    def _remove_locked(self, doc_id: str) -> None:
        entry = self.docs.pop(doc_id)
        ids = np.asarray(entry["chunk_ids"], dtype=np.int64)
        if self._undo is not None:
            # What it takes to put the document back: its entry, its chunks and their vectors.
            vectors = np.vstack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else None
            chunks = {int(cid): self.chunks[int(cid)] for cid in entry["chunk_ids"] if int(cid) in self.chunks}
            self._undo.append(lambda: self._restore_locked(doc_id, entry, ids, vectors, chunks))
        self.index.remove_ids(ids)
        for cid in entry["chunk_ids"]:
            self.chunks.pop(int(cid), None)

    def _restore_locked(
        self, doc_id: str, entry: dict[str, Any], ids: np.ndarray, vectors: np.ndarray | None, chunks: dict[int, Chunk]
    ) -> None:
        if vectors is not None:
            self.index.add_with_ids(vectors, ids)
        self.chunks.update(chunks)
        self.docs[doc_id] = entry

    # -- persistence ---------------------------------------------------------------------------
    def save(self) -> Path | None:
        if self.directory is None:
            return None
        import faiss

        with self._lock:
            snapshots = self.directory / "snapshots"
            snapshots.mkdir(parents=True, exist_ok=True)
            name = f"{self.generation:012d}"
            final = snapshots / name
            if (final / "manifest.json").exists() and self._current_name() == name:
                return final
            tmp = snapshots / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _write_file(tmp / "index.faiss", faiss.serialize_index(self.index).tobytes())
            store = {
                "docs": self.docs,
                "chunks": [asdict(c) for c in self.chunks.values()],
                "next_chunk_id": self.next_chunk_id,
            }
            _write_file(tmp / "docstore.json", json.dumps(store).encode("utf-8"))
            manifest = {
                "format": FORMAT_VERSION,
                "dim": self.dim,
                "embedder": self.embedder_name,
                "generation": self.generation,
                "documents": len(self.docs),
                "chunks": len(self.chunks),
            }
            _write_file(tmp / "manifest.json", json.dumps(manifest).encode("utf-8"))
            _fsync_dir(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(snapshots)
            pointer = self.directory / ".CURRENT.tmp"
            _write_file(pointer, name.encode("ascii"))
            os.replace(pointer, self.directory / "CURRENT")
            # Committed: CURRENT names the new snapshot. What follows must not raise, or a transaction
            # would undo in memory what is already on disk.
            try:
                _fsync_dir(self.directory)
                self._prune(snapshots, keep=name)
            except OSError as exc:
                logger.warning("index snapshot %s saved, but tidying up after it failed: %s", final, exc)
            return final

    def _current_name(self) -> str | None:
        assert self.directory is not None
        try:
            return (self.directory / "CURRENT").read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None

    def _prune(self, snapshots: Path, keep: str) -> None:
        names = sorted(p.name for p in snapshots.iterdir() if p.is_dir() and not p.name.startswith("."))
        for old in names[:-KEEP_SNAPSHOTS]:
            if old != keep:
                shutil.rmtree(snapshots / old, ignore_errors=True)

    @classmethod
    def open(cls, dim: int, embedder_name: str, directory: str | Path) -> VectorStore:
        """Load the snapshot ``CURRENT`` names, or start empty when there is none."""
        import faiss

        store = cls(dim, embedder_name, directory)
        name = store._current_name()
        if name is None:
            return store
        snap = Path(directory) / "snapshots" / name
        try:
            manifest = json.loads((snap / "manifest.json").read_text(encoding="utf-8"))
            data = json.loads((snap / "docstore.json").read_text(encoding="utf-8"))
            index = faiss.deserialize_index(np.frombuffer((snap / "index.faiss").read_bytes(), dtype=np.uint8))
        except (OSError, ValueError, RuntimeError) as exc:
            raise IndexStateError(f"index snapshot {snap} is unreadable: {exc}") from exc
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexStateError(f"index snapshot {snap} has format {manifest.get('format')}")
        if manifest.get("dim") != dim or manifest.get("embedder") != embedder_name:
            raise IndexStateError(
                f"index at {directory} was built with {manifest.get('embedder')} ({manifest.get('dim')}-d); "
                f"the configured embedder is {embedder_name} ({dim}-d): point index.dir elsewhere"
            )
        store.index = index
        store.docs = data["docs"]
        store.chunks = {int(c["chunk_id"]): Chunk(**c) for c in data["chunks"]}
        store.next_chunk_id = int(data["next_chunk_id"])
        store.generation = int(manifest["generation"])
        if store.index.ntotal != len(store.chunks):
            raise IndexStateError(f"index snapshot {snap} is inconsistent: vectors and chunks differ")
        logger.info("loaded index snapshot %s: %d docs, %d chunks", snap, len(store.docs), len(store.chunks))
        return store
