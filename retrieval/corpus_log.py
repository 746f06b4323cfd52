"""The corpus log: the store of record for documents when several retriever replicas serve one corpus.

Every committed change (a batch of upserts with their chunks and vectors, or a removal) is one entry, numbered
1, 2, 3, ... with no gaps: the entry's number is the corpus *generation* it makes. A replica applies the entries
in order to its own FAISS index and doc store, so two replicas at the same generation hold the same documents;
a writer appends only if the log is still at the generation it checked the batch against (compare-and-append),
so two replicas writing at once cannot both admit a document id for two namespaces.

Why a Redis stream, not a shared volume: the chart already runs Redis for budgets, caches and rate limits; a
stream gives ordered, durable (append-only file, ``WAITAOF``) entries that any number of readers follow with a
blocking read, and a Lua script makes the compare-and-append atomic. A ReadWriteMany volume with a generation
file would need a lock that works across nodes (NFS locks do not, reliably) and polling to follow it.

Entries carry the vectors, so a replica never re-embeds what another replica embedded: applying an entry is a
FAISS add, not a model call.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from typing_extensions import TypedDict  # pydantic and FastAPI read it on Python 3.11

from core.redis_client import Guard, sync_client
from retrieval.errors import CorpusLogError, CorpusLogUnavailableError

if TYPE_CHECKING:
    from retrieval.documents import DocumentRecord

logger = logging.getLogger(__name__)

# Entries one read brings at most.
READ_COUNT = 256


class LogMeta(TypedDict, total=False):
    """An entry's JSON part: an upsert (the embedder and the documents) or a removal (the document's namespace
    and id; entries written before ids were scoped to a namespace carry the id alone)."""

    op: Literal["upsert", "remove"]
    embedder: str
    docs: list[DocumentRecord]
    seed: bool  # the log's first entry, published from a replica's snapshot
    id: str
    namespace: str


@dataclass(frozen=True)
class LogEntry:
    """One committed change. ``meta`` is the JSON part (the op and its documents); ``vectors`` the float32
    rows of every upserted chunk, in the order of ``meta``'s documents and their pieces."""

    generation: int
    meta: LogMeta
    vectors: np.ndarray

    def encode(self) -> tuple[bytes, bytes]:
        return json.dumps(self.meta, ensure_ascii=False).encode("utf-8"), np.ascontiguousarray(
            self.vectors, dtype=np.float32
        ).tobytes()

    @classmethod
    def decode(cls, generation: int, meta: bytes, vectors: bytes, dim: int) -> LogEntry:
        rows = np.frombuffer(vectors, dtype=np.float32)
        if dim and rows.size % dim:
            raise CorpusLogError(f"corpus log entry {generation}: {rows.size} floats are not rows of {dim}")
        return cls(generation, json.loads(meta), rows.reshape(-1, dim) if dim else rows.reshape(0, 0))


class CorpusLog(Protocol):
    """What a retriever needs of the store of record."""

    def epoch(self) -> str:
        """The log's identity: a snapshot built from another log (Redis was emptied) must not be continued."""
        ...

    def head(self) -> int:
        """The generation of the newest entry (0: empty)."""
        ...

    def append(self, expected_head: int, meta: bytes, vectors: bytes) -> int | None:
        """Append one entry if the head is still ``expected_head``; its generation, or None (the head
        moved: catch up, check again, retry). Returns once the entry is durable."""
        ...

    def read(self, after: int, *, block_s: float = 0.0, count: int = READ_COUNT) -> list[tuple[int, bytes, bytes]]:
        """Entries after generation ``after``, oldest first, at most ``count``; with ``block_s``, waits up
        to that long for one when there is none yet."""
        ...


class MemoryCorpusLog:
    """The log in this process (tests, and several retrievers in one process)."""

    def __init__(self) -> None:
        self._id = uuid.uuid4().hex
        self._entries: list[tuple[bytes, bytes]] = []
        self._cond = threading.Condition()

    def epoch(self) -> str:
        return self._id

    def head(self) -> int:
        with self._cond:
            return len(self._entries)

    def append(self, expected_head: int, meta: bytes, vectors: bytes) -> int | None:
        with self._cond:
            if len(self._entries) != expected_head:
                return None
            self._entries.append((meta, vectors))
            self._cond.notify_all()
            return len(self._entries)

    def read(self, after: int, *, block_s: float = 0.0, count: int = READ_COUNT) -> list[tuple[int, bytes, bytes]]:
        with self._cond:
            if block_s > 0 and len(self._entries) <= after:
                self._cond.wait_for(lambda: len(self._entries) > after, timeout=block_s)
            return [(n + 1, *self._entries[n]) for n in range(after, min(len(self._entries), after + count))]


# KEYS: the stream, the head counter. ARGV: the head the writer checked against, the entry's two fields.
# The entry's stream id is "<generation>-0", so a read after generation g starts at id "g-0", exclusive.
_APPEND = """
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
if head ~= tonumber(ARGV[1]) then return -1 end
head = head + 1
redis.call('XADD', KEYS[1], head .. '-0', 'meta', ARGV[2], 'vectors', ARGV[3])
redis.call('SET', KEYS[2], head)
return head
"""


class RedisCorpusLog:
    """The log as a Redis stream ``<prefix>:log`` with its head at ``<prefix>:head`` and its identity at
    ``<prefix>:epoch``. ``fsync``: an append returns once Redis has written it to its append-only file, so an
    acknowledged document survives a Redis crash (`check` says what that takes of the server)."""

    def __init__(self, url: str, *, prefix: str = "ragyard:corpus", fsync: bool = True) -> None:
        self.url = url
        self.prefix = prefix
        self.fsync = fsync
        self.client = sync_client(url)
        # A blocking read holds its connection for the whole wait: a client of its own, with a longer timeout.
        self._reader = sync_client(url, timeout_s=30.0)
        self.guard = Guard("corpus log (redis)", CorpusLogUnavailableError)
        self._append = self.client.register_script(_APPEND)
        self._epoch: str | None = None
        self._waitaof = False  # `check` finds out whether this Redis has WAITAOF (7.2+)
        self._keys = [f"{prefix}:log", f"{prefix}:head"]

    def check(self) -> None:
        """Refuse a Redis that would lose acknowledged writes. With ``fsync``: Redis 7.2 or newer with its
        append-only file on (each append then waits on ``WAITAOF``), or an older one that fsyncs before it
        answers (``appendfsync always``)."""
        if not self.fsync:
            return
        config = self.guard.call(self.client.config_get, "append*")
        version = str(self.guard.call(self.client.info, "server").get("redis_version", "0"))
        major, minor = (int(p) for p in [*version.split("."), "0"][:2])
        self._waitaof = (major, minor) >= (7, 2)
        if config.get("appendonly") != "yes" or (not self._waitaof and config.get("appendfsync") != "always"):
            need = "`appendonly yes`"
            if not self._waitaof:
                need += " and `appendfsync always` (before 7.2 Redis has no WAITAOF)"
            raise CorpusLogError(
                f"the corpus log at {self.url} needs Redis {version} with {need}: an acknowledged document must "
                "survive a Redis crash. Configure it so, or set index.log_fsync: false to accept losing the last "
                "second of writes"
            )

    def epoch(self) -> str:
        if self._epoch is None:
            key = f"{self.prefix}:epoch"
            self.guard.call(self.client.set, key, uuid.uuid4().hex, nx=True)
            value = self.guard.call(self.client.get, key)
            self._epoch = value.decode() if isinstance(value, bytes) else str(value)
        return self._epoch

    def head(self) -> int:
        value = self.guard.call(self.client.get, self._keys[1])
        return int(value or 0)

    def append(self, expected_head: int, meta: bytes, vectors: bytes) -> int | None:
        generation = int(self.guard.call(self._append, keys=self._keys, args=[expected_head, meta, vectors]))
        if generation < 0:
            return None
        if self.fsync and self._waitaof:
            local, _ = self.guard.call(self.client.execute_command, "WAITAOF", 1, 0, 2000)
            if int(local) < 1:
                raise CorpusLogUnavailableError(
                    f"corpus log: entry {generation} was not written to Redis's append-only file within 2 s"
                )
        return generation

    def read(self, after: int, *, block_s: float = 0.0, count: int = READ_COUNT) -> list[tuple[int, bytes, bytes]]:
        if block_s > 0:
            reply = self.guard.call(
                self._reader.xread, {self._keys[0]: f"{after}-0"}, count=count, block=int(block_s * 1000)
            )
            rows = reply[0][1] if reply else []
        else:
            rows = self.guard.call(self.client.xrange, self._keys[0], min=f"({after}-0", max="+", count=count)
        out = []
        for entry_id, fields in rows:
            generation = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
            out.append((generation, fields[b"meta"], fields[b"vectors"]))
        return out


def open_log(url: str, *, fsync: bool = True, prefix: str = "ragyard:corpus") -> CorpusLog:
    """The log a URL names: ``redis://...`` (or ``rediss://``), or ``memory://`` (this process only)."""
    if url.startswith("memory://"):
        return MemoryCorpusLog()
    if url.startswith(("redis://", "rediss://", "unix://")):
        log = RedisCorpusLog(url, prefix=prefix, fsync=fsync)
        log.check()
        return log
    raise CorpusLogError(f"index.log_url {url!r}: expected redis://host:port/db or memory://")
