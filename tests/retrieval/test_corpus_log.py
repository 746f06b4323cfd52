"""The corpus log: several retrievers (replicas) over one store of record, in memory and on a real Redis."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.corpus_log import MemoryCorpusLog, RedisCorpusLog, open_log
from retrieval.documents import Document
from retrieval.errors import CorpusLogError, GenerationAheadError
from retrieval.retriever import Retriever

pytestmark = [pytest.mark.integration, pytest.mark.model]


def replica(embedder: Any, log: Any, index_dir: Path | None = None) -> Retriever:
    return Retriever.create(index_dir=index_dir, embedder=embedder, chunk_tokens=64, chunk_overlap_tokens=16, log=log)


QUUX = Document(id="quux", title="Quux", text="Zorblat is the capital of the kingdom of Quux.")
FROB = Document(id="frob", title="Frob", text="The river Frob flows north into the Glimmer Sea.")


def test_a_write_on_one_replica_is_found_on_the_other(embedder: Any) -> None:
    log = MemoryCorpusLog()
    a, b = replica(embedder, log), replica(embedder, log)
    report = a.ingest([QUUX])
    assert report.added == ["quux"] and report.generation == 1 == log.head()
    assert b.generation == 0 and b.search("capital of Quux", 1) == []
    assert b.catch_up(report.generation) == 1
    hit = b.search("What is the capital of Quux?", 1)[0]
    assert hit.chunk.doc_id == "quux"
    # The vectors travel in the log: b's index holds exactly a's.
    assert np.allclose(a.store.index.reconstruct(0), b.store.index.reconstruct(0))
    # A removal on b reaches a.
    assert b.remove("quux") is True
    a.catch_up()
    assert a.documents() == [] and a.generation == b.generation == 2


def test_one_id_in_two_namespaces_through_the_log(embedder: Any) -> None:
    log = MemoryCorpusLog()
    a, b = replica(embedder, log), replica(embedder, log)
    a.ingest([Document(id="faq", text="one tenant's page", namespace="t1")])
    # b has not applied a's entry; its write of the same id in another namespace is its own document.
    theirs = b.ingest([Document(id="faq", text="another tenant's page", namespace="t2")])
    assert theirs.added == ["faq"] and log.head() == 2
    a.catch_up()
    assert a.store.holders("faq") == b.store.holders("faq") == ["t1", "t2"]
    # The same content again through b is unchanged, with no new entry.
    again = b.ingest([Document(id="faq", text="one tenant's page", namespace="t1")])
    assert again.unchanged == ["faq"] and log.head() == 2
    # A removal names its namespace: t2's goes on every replica, t1's stays.
    assert b.remove("faq", "t2") is True
    a.catch_up()
    assert a.store.holders("faq") == ["t1"] and [c.text for c in a.store.chunks.values()] == ["one tenant's page"]


class RacingLog(MemoryCorpusLog):
    """Lets another writer's entry land between a writer's check and its append, ``races`` times."""

    def __init__(self, other: list[Retriever], races: int) -> None:
        super().__init__()
        self.other, self.races, self.refused = other, races, 0

    def append(self, expected_head: int, meta: bytes, vectors: bytes) -> int | None:
        if self.races and self.other:
            self.races -= 1
            n = self.head()
            super().append(n, b'{"op": "remove", "id": "nothing"}', b"")
        result = super().append(expected_head, meta, vectors)
        self.refused += result is None
        return result


def test_an_append_overtaken_by_another_writer_is_checked_again_and_retried(embedder: Any) -> None:
    log = RacingLog([], races=0)
    a = replica(embedder, log)
    log.other, log.races = [a], 2
    report = a.ingest([QUUX])
    assert log.refused == 2 and report.added == ["quux"]
    assert report.generation == 3 == a.generation == log.head()


def test_a_follower_applies_entries_as_they_land(embedder: Any) -> None:
    log = MemoryCorpusLog()
    a, b = replica(embedder, log), replica(embedder, log)
    stop = threading.Event()
    thread = threading.Thread(target=b.follow, args=(stop,), kwargs={"block_s": 0.2}, daemon=True)
    thread.start()
    try:
        a.ingest([QUUX])
        a.ingest([FROB])
        deadline = time.monotonic() + 10
        while b.generation < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.generation == 2
        assert {d["id"] for d in b.documents()} == {"quux", "frob"}
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_restarted_replica_continues_from_its_snapshot(embedder: Any, tmp_path: Path) -> None:
    log = MemoryCorpusLog()
    a = replica(embedder, log, tmp_path / "idx")
    a.ingest([QUUX])
    a.store.close()
    # While it was down, another replica wrote one more document.
    replica(embedder, log).ingest([FROB])
    back = replica(embedder, log, tmp_path / "idx")
    assert back.store.directory == tmp_path / "idx" / "replica-0"
    assert back.generation == 2 and {d["id"] for d in back.documents()} == {"quux", "frob"}
    # Two replicas on one directory take a folder each.
    other = replica(embedder, log, tmp_path / "idx")
    assert other.store.directory == tmp_path / "idx" / "replica-1" and other.generation == 2


def test_a_snapshot_from_before_the_log_seeds_an_empty_log(embedder: Any, tmp_path: Path) -> None:
    # A single-replica install (its index directory the record) moves to a corpus log.
    local = Retriever.create(index_dir=tmp_path / "idx", embedder=embedder)
    local.ingest([QUUX, FROB])
    local.store.close()
    log = MemoryCorpusLog()
    first = replica(embedder, log, tmp_path / "idx")
    assert log.head() == 1 and first.generation == 1
    fresh = replica(embedder, log)
    assert {d["id"] for d in fresh.documents()} == {"quux", "frob"}
    assert fresh.search("capital of Quux", 1)[0].chunk.doc_id == "quux"


def test_a_snapshot_of_another_log_is_rebuilt_from_this_one(embedder: Any, tmp_path: Path) -> None:
    old = MemoryCorpusLog()
    a = replica(embedder, old, tmp_path / "idx")
    a.ingest([QUUX])
    a.store.close()
    new = MemoryCorpusLog()
    replica(embedder, new).ingest([FROB])
    back = replica(embedder, new, tmp_path / "idx")
    assert [d["id"] for d in back.documents()] == ["frob"] and back.generation == 1


def test_a_generation_no_write_returned_is_refused(embedder: Any) -> None:
    log = MemoryCorpusLog()
    a = replica(embedder, log)
    a.ingest([QUUX])
    with pytest.raises(GenerationAheadError):
        a.catch_up(5)
    # Without a log the store's own count is the generation.
    local = Retriever.create(index_dir=None, embedder=embedder)
    assert local.ingest([QUUX]).generation == 1
    with pytest.raises(GenerationAheadError):
        local.catch_up(2)


def test_an_entry_from_another_embedder_stops_the_replica(embedder: Any) -> None:
    log = MemoryCorpusLog()
    log.append(0, b'{"op": "upsert", "embedder": "some-other-model", "docs": []}', b"")
    with pytest.raises(CorpusLogError, match="some-other-model"):
        replica(embedder, log)


def test_redis_log_appends_in_order_and_blocks_for_new_entries(redis_url: str) -> None:
    log = RedisCorpusLog(redis_url, prefix=f"test:{uuid.uuid4().hex}", fsync=False)
    assert log.head() == 0 and log.epoch() == log.epoch()
    assert log.append(0, b'{"n": 1}', b"\x00" * 8) == 1
    assert log.append(0, b'{"n": 2}', b"") is None  # the head moved
    assert log.append(1, b'{"n": 2}', b"") == 2
    assert [(g, m) for g, m, _ in log.read(0)] == [(1, b'{"n": 1}'), (2, b'{"n": 2}')]
    assert [g for g, _, _ in log.read(1)] == [2] and log.read(2) == []
    started = time.monotonic()
    assert log.read(2, block_s=0.3) == [] and time.monotonic() - started >= 0.25
    threading.Timer(0.2, lambda: log.append(2, b'{"n": 3}', b"")).start()
    assert [g for g, _, _ in log.read(2, block_s=5)] == [3]


def test_redis_log_refuses_a_redis_that_would_lose_acknowledged_writes(redis_url: str) -> None:
    # The suite's Redis runs without an append-only file.
    with pytest.raises(CorpusLogError, match="appendonly yes"):
        open_log(redis_url, prefix=f"test:{uuid.uuid4().hex}")


def test_redis_log_waits_for_the_append_only_file(embedder: Any, tmp_path: Path) -> None:
    from bench.chaos.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        log = open_log(server.url)
        a, b = replica(embedder, log), replica(embedder, open_log(server.url))
        assert a.ingest([QUUX]).generation == 1
        # Killed -9 and started again from its append-only file: the acknowledged entry is there.
        server.kill()
        server.start()
        c = replica(embedder, open_log(server.url))
        assert [d["id"] for d in c.documents()] == ["quux"]
        b.catch_up(1)
        assert [d["id"] for d in b.documents()] == ["quux"]
    finally:
        server.stop()
