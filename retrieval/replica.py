"""A retriever's index as one replica of the corpus log (`index.log_url`): joining the log, applying its entries
in order (its own writes and everyone else's), following it on a thread, and saving the local snapshot as a cache
that makes a restart quick. The log is the store of record; the retriever (`retrieval/retriever.py`) checks,
embeds and appends writes, and reads.

Also the one rule for putting a batch of embedded documents into a store (`upsert_records`), which a local
write and an applied log entry share.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from retrieval.corpus_log import READ_COUNT, CorpusLog, LogEntry, LogMeta
from retrieval.documents import DocumentRecord, IngestReport
from retrieval.errors import CorpusLogError, IndexLockedError, IndexWriteError
from retrieval.store import VectorStore

logger = logging.getLogger(__name__)

# Seconds between a follower's snapshot saves while entries keep coming (a save serialises the whole index).
SAVE_EVERY_S = 5.0
# Replica folders one index directory holds at most (log mode), and those this process's stores hold.
MAX_REPLICA_DIRS = 64
_REPLICA_DIRS: weakref.WeakValueDictionary[Path, VectorStore] = weakref.WeakValueDictionary()


def upsert_records(
    store: VectorStore, records: list[DocumentRecord], vectors: np.ndarray, report: IngestReport | None
) -> None:
    """Put embedded documents into ``store`` (``vectors``: their chunks' rows, in order), counting what changed
    in ``report`` when given."""
    offset = 0
    for record in records:
        n = len(record["pieces"])
        outcome = store.upsert_record(record, vectors[offset : offset + n])
        offset += n
        if report is not None and outcome != "unchanged":
            (report.added if outcome == "added" else report.updated).append(record["id"])
            report.chunks_added += n


class LogReplica:
    """``store`` kept in step with ``log``. Every method whose name ends in ``_locked`` runs under ``lock``, the
    retriever's write lock (writes and applied entries are serialised: an entry is applied once, in order)."""

    def __init__(self, store: VectorStore, log: CorpusLog, lock: threading.Lock) -> None:
        self.store = store
        self.log = log
        self.lock = lock
        self._unsaved = False  # entries applied since the last snapshot
        self._saved_at = time.monotonic()

    def join(self) -> None:
        """Before serving: make sure the local snapshot continues this log (else start over from the log, or,
        when the log is empty and the snapshot is not, publish the snapshot as the log's first entry), then
        catch up."""
        epoch = self.log.epoch()
        with self.lock:
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
            self.catch_up_locked()
            self.save_locked()

    def _seed_locked(self) -> bool:
        records, vectors = self.store.records()
        meta: LogMeta = {"op": "upsert", "embedder": self.store.embedder_name, "docs": records, "seed": True}
        generation = self.log.append(0, *LogEntry(0, meta, vectors).encode())
        if generation is None:
            return False
        self.store.corpus_generation = generation
        self._unsaved = True
        return True

    def append_locked(self, meta: LogMeta, vectors: np.ndarray) -> LogEntry | None:
        """Append a write checked against this replica's generation: the entry as the log numbered it (apply it
        next), or None when another writer's entry landed first (catch up and check the write again)."""
        generation = self.log.append(self.store.corpus_generation, *LogEntry(0, meta, vectors).encode())
        return None if generation is None else LogEntry(generation, meta, vectors)

    def catch_up_locked(self) -> None:
        while True:
            rows = self.log.read(self.store.corpus_generation)
            self._apply_rows_locked(rows)
            if len(rows) < READ_COUNT:
                return

    def _apply_rows_locked(self, rows: list[tuple[int, bytes, bytes]]) -> None:
        for generation, meta, vectors in rows:
            if generation <= self.store.corpus_generation:
                continue  # this replica wrote it, or a catch-up got there first
            self.apply_locked(LogEntry.decode(generation, meta, vectors, self.store.dim), None)

    def apply_locked(self, entry: LogEntry, report: IngestReport | None) -> None:
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
                upsert_records(self.store, meta["docs"], entry.vectors, report)
            elif meta.get("op") == "remove":
                # Entries from before ids were scoped to a namespace name none: the id was unique then.
                namespace = meta.get("namespace")
                for ns in [namespace] if namespace is not None else self.store.holders(meta["id"]):
                    self.store.remove(ns, meta["id"])
            else:
                raise CorpusLogError(f"corpus log entry {entry.generation} has an unknown op {meta.get('op')!r}")
            self.store.corpus_generation = entry.generation
        self._unsaved = True

    def follow(self, stop: threading.Event, *, block_s: float = 1.0) -> None:
        """Apply other writers' entries as they land, until ``stop`` is set; save the snapshot when the log
        goes quiet, or every SAVE_EVERY_S while it does not. Runs on a thread of its own (the service's)."""
        failing = False
        while not stop.is_set():
            try:
                rows = self.log.read(self.store.corpus_generation, block_s=block_s)
                if rows:
                    with self.lock:
                        self._apply_rows_locked(rows)
                if self._unsaved and (not rows or time.monotonic() - self._saved_at > SAVE_EVERY_S):
                    with self.lock:
                        self.save_locked()
                if failing:
                    logger.info("corpus log: following again at generation %d", self.store.corpus_generation)
                failing = False
            except Exception as exc:  # noqa: BLE001 - the follower outlives a Redis outage
                if not failing:
                    logger.warning("corpus log: cannot follow (%s); retrying every second", exc)
                failing = True
                stop.wait(1.0)

    def save_locked(self) -> None:
        if not self._unsaved:
            return
        try:
            self.store.save()
        except IndexWriteError as exc:
            logger.warning("corpus generation %d applied but not saved locally: %s", self.store.corpus_generation, exc)
            return
        self._unsaved = False
        self._saved_at = time.monotonic()


def open_replica_store(dim: int, embedder_name: str, root: Path, lock_timeout_s: float) -> VectorStore:
    """Log mode: this replica's own snapshot folder under ``root``, the first ``replica-N`` no other process
    holds (so replicas on one host share the directory, and one that restarts finds a snapshot to continue);
    an empty one adopts a snapshot from before the corpus log at ``root`` itself."""
    store = _open_replica_dir(dim, embedder_name, root)
    _adopt_legacy_snapshot(store, root, lock_timeout_s)
    return store


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
    upsert_records(store, records, vectors, None)
    logger.info("took %d documents from the index snapshot at %s (from before the corpus log)", len(records), root)


def _open_replica_dir(dim: int, embedder_name: str, root: Path) -> VectorStore:
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
