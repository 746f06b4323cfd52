"""A store's directory on disk: atomic snapshots and the one-writer lock.

Each save writes a complete new snapshot folder (index, doc store, manifest last), fsyncs it, then swaps the
one-line ``CURRENT`` pointer with ``os.replace``. A crash at any point leaves the previous snapshot named by
``CURRENT`` intact and readable. Two snapshots are kept. One process writes a directory at a time: an OS file
lock (``.lock``) is held from `SnapshotDir.lock` to `SnapshotDir.release`."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.documents import SHARED_NAMESPACE, Chunk, DocKey, StoredDocument
from retrieval.errors import IndexLockedError, IndexStateError, IndexWriteError

logger = logging.getLogger(__name__)

# 2: documents as a list keyed by (namespace, id); 1 (still read): a ``docs`` object keyed by id.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
KEEP_SNAPSHOTS = 2


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


@dataclass
class Snapshot:
    """What a snapshot holds: the FAISS index, the documents and chunks, and the counters."""

    index: Any  # a faiss IndexIDMap2
    docs: dict[DocKey, StoredDocument]
    chunks: dict[int, Chunk]
    next_chunk_id: int
    generation: int
    corpus_generation: int
    epoch: str | None


class SnapshotDir:
    def __init__(self, directory: Path, dim: int, embedder_name: str) -> None:
        self.directory = directory
        self.dim = dim
        self.embedder_name = embedder_name
        self._writer_lock: Any = None

    # -- the writer lock ------------------------------------------------------------------------
    def lock(self, timeout_s: float) -> None:
        """Hold the directory's writer lock until `release`. A second process that opens the directory waits
        up to ``timeout_s`` and then fails: two writers would each save their own view and the last save would
        drop the other's documents. Holders in one process share the lock (it counts), so a reopen in the same
        process is fine."""
        import filelock

        self.directory.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.directory / ".lock", timeout=timeout_s, thread_local=False, is_singleton=True)
        try:
            lock.acquire()
        except filelock.Timeout as exc:
            raise IndexLockedError(
                f"index directory {self.directory} has another writer (a running server, or `ragyard ingest`): "
                f"waited {timeout_s:g} s for it. Send documents to the server (`ragyard ingest --url ...`) or "
                "point index.dir elsewhere"
            ) from exc
        self._writer_lock = lock

    @property
    def locked(self) -> bool:
        """Whether this holder has the writer lock now."""
        return self._writer_lock is not None

    def release(self) -> None:
        """Let go of the writer lock (the process's last holder of this directory releases it)."""
        lock, self._writer_lock = self._writer_lock, None
        if lock is not None:
            lock.release()

    # -- writing --------------------------------------------------------------------------------
    def write(self, snap: Snapshot) -> Path:
        """Write ``snap`` as a new snapshot and point CURRENT at it. A failure before the pointer moves (a full
        or read-only disk) is an IndexWriteError, and the half-written snapshot is removed: CURRENT still names
        the previous one, and nothing of the failed one is visible."""
        try:
            return self._write(snap)
        except OSError as exc:
            for partial in (self.directory / "snapshots").glob(".*.tmp"):
                shutil.rmtree(partial, ignore_errors=True)
            (self.directory / ".CURRENT.tmp").unlink(missing_ok=True)
            logger.error("index snapshot in %s not saved: %s", self.directory, exc)
            raise IndexWriteError(f"the index could not be saved ({exc.strerror or exc}); nothing changed") from exc

    def _write(self, snap: Snapshot) -> Path:
        import faiss

        snapshots = self.directory / "snapshots"
        snapshots.mkdir(parents=True, exist_ok=True)
        name = f"{snap.generation:012d}"
        final = snapshots / name
        if (final / "manifest.json").exists() and self.current_name() == name:
            return final
        tmp = snapshots / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_file(tmp / "index.faiss", faiss.serialize_index(snap.index).tobytes())
        store = {
            # A list, each entry with its namespace and id: ids are unique per namespace, not overall.
            "documents": [{**entry, "namespace": ns, "id": doc_id} for (ns, doc_id), entry in snap.docs.items()],
            "chunks": [asdict(c) for c in snap.chunks.values()],
            "next_chunk_id": snap.next_chunk_id,
        }
        _write_file(tmp / "docstore.json", json.dumps(store).encode("utf-8"))
        manifest = {
            "format": FORMAT_VERSION,
            "dim": self.dim,
            "embedder": self.embedder_name,
            "generation": snap.generation,
            "corpus_generation": snap.corpus_generation,
            "epoch": snap.epoch,
            "documents": len(snap.docs),
            "chunks": len(snap.chunks),
        }
        _write_file(tmp / "manifest.json", json.dumps(manifest).encode("utf-8"))
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(snapshots)
        pointer = self.directory / ".CURRENT.tmp"
        _write_file(pointer, name.encode("ascii"))
        os.replace(pointer, self.directory / "CURRENT")
        # Committed: CURRENT names the new snapshot. What follows must not raise, or a transaction would undo
        # in memory what is already on disk.
        try:
            _fsync_dir(self.directory)
            self._prune(snapshots, keep=name)
        except OSError as exc:
            logger.warning("index snapshot %s saved, but tidying up after it failed: %s", final, exc)
        return final

    def current_name(self) -> str | None:
        try:
            return (self.directory / "CURRENT").read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None

    @staticmethod
    def _prune(snapshots: Path, keep: str) -> None:
        names = sorted(p.name for p in snapshots.iterdir() if p.is_dir() and not p.name.startswith("."))
        for old in names[:-KEEP_SNAPSHOTS]:
            if old != keep:
                shutil.rmtree(snapshots / old, ignore_errors=True)

    # -- reading --------------------------------------------------------------------------------
    def prune_leftovers(self) -> None:
        """What a save that crashed left behind: a half-written snapshot folder, a pointer not swapped in."""
        snapshots = self.directory / "snapshots"
        leftovers = list(snapshots.glob(".*.tmp")) if snapshots.is_dir() else []
        leftovers += [p for p in [self.directory / ".CURRENT.tmp"] if p.exists()]
        for path in leftovers:
            logger.warning("removing %s, left by a save that did not finish", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def read(self) -> Snapshot | None:
        """The snapshot ``CURRENT`` names (None: there is none yet), checked whole and against the configured
        embedder."""
        import faiss

        name = self.current_name()
        if name is None:
            return None
        snap = self.directory / "snapshots" / name
        try:
            manifest = json.loads((snap / "manifest.json").read_text(encoding="utf-8"))
            data = json.loads((snap / "docstore.json").read_text(encoding="utf-8"))
            index = faiss.deserialize_index(np.frombuffer((snap / "index.faiss").read_bytes(), dtype=np.uint8))
        except (OSError, ValueError, RuntimeError) as exc:
            raise IndexStateError(f"index snapshot {snap} is unreadable: {exc}") from exc
        if manifest.get("format") not in READABLE_FORMATS:
            raise IndexStateError(f"index snapshot {snap} has format {manifest.get('format')}")
        if manifest.get("dim") != self.dim or manifest.get("embedder") != self.embedder_name:
            raise IndexStateError(
                f"index at {self.directory} was built with {manifest.get('embedder')} ({manifest.get('dim')}-d); "
                f"the configured embedder is {self.embedder_name} ({self.dim}-d): point index.dir elsewhere"
            )
        chunks = {int(c["chunk_id"]): Chunk(**c) for c in data["chunks"]}
        if index.ntotal != len(chunks):
            raise IndexStateError(f"index snapshot {snap} is inconsistent: vectors and chunks differ")
        docs = _documents(data)
        for entry in docs.values():
            # Snapshots from before chunks carried their document's fingerprint: from the document.
            for cid in entry["chunk_ids"]:
                if int(cid) in chunks and not chunks[int(cid)].fingerprint:
                    chunks[int(cid)] = replace(chunks[int(cid)], fingerprint=str(entry["fingerprint"]))
        logger.info("loaded index snapshot %s: %d docs, %d chunks", snap, len(docs), len(chunks))
        return Snapshot(
            index=index,
            docs=docs,
            chunks=chunks,
            next_chunk_id=int(data["next_chunk_id"]),
            generation=int(manifest["generation"]),
            # Snapshots from before the corpus log count their changes only.
            corpus_generation=int(manifest.get("corpus_generation", 0)),
            epoch=manifest.get("epoch"),
        )


def _documents(data: dict[str, Any]) -> dict[DocKey, StoredDocument]:
    """The stored documents by (namespace, id). Snapshots from before ids were scoped to a namespace keep
    a ``docs`` object by id (one namespace per id then); later ones a ``documents`` list."""
    if "documents" in data:
        entries = [(str(e["id"]), e) for e in data["documents"]]
    else:
        entries = [(str(doc_id), {**e, "id": doc_id}) for doc_id, e in data["docs"].items()]
    return {(str(e.get("namespace", SHARED_NAMESPACE)), doc_id): e for doc_id, e in entries}
