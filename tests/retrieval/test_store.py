from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from retrieval.errors import IndexStateError
from retrieval.store import VectorStore
from tests.utils.factories import document, unit_vectors

pytestmark = pytest.mark.unit

DIM = 16


def _add(store: VectorStore, text: str, n_chunks: int, seed: int, doc_id: str = "") -> str:
    doc = document(text=text, doc_id=doc_id)
    pieces = [(i * 10, f"{text} part {i}") for i in range(n_chunks)]
    return store.upsert(doc, pieces, unit_vectors(n_chunks, DIM, seed))


def test_search_finds_the_nearest_chunk() -> None:
    store = VectorStore(DIM, "test")
    vecs = unit_vectors(3, DIM, 1)
    store.upsert(document("three chunks"), [(0, "a"), (5, "b"), (9, "c")], vecs)
    [hits] = store.search(vecs[1:2], k=2)
    assert hits[0].chunk.text == "b"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 2


def test_upsert_unchanged_updated_and_remove() -> None:
    store = VectorStore(DIM, "test")
    assert _add(store, "v1", 2, 0, doc_id="doc") == "added"
    assert _add(store, "v1", 2, 0, doc_id="doc") == "unchanged"
    gen = store.generation
    assert _add(store, "v2", 3, 1, doc_id="doc") == "updated"
    assert store.generation == gen + 1
    assert len(store) == 3 and store.index.ntotal == 3
    assert all(c.text.startswith("v2") for c in store.chunks.values())
    assert store.remove("doc") and len(store) == 0 and store.index.ntotal == 0
    assert not store.remove("doc")


def test_persistence_round_trip(tmp_path: Path) -> None:
    store = VectorStore(DIM, "test", tmp_path)
    _add(store, "persist me", 2, 3)
    store.save()
    back = VectorStore.open(DIM, "test", tmp_path)
    assert back.generation == store.generation
    assert {c.text for c in back.chunks.values()} == {c.text for c in store.chunks.values()}
    q = unit_vectors(2, DIM, 3)[:1]
    assert back.search(q, 1)[0][0].chunk.text == store.search(q, 1)[0][0].chunk.text


def test_crash_mid_save_leaves_previous_snapshot_readable(tmp_path: Path) -> None:
    store = VectorStore(DIM, "test", tmp_path)
    _add(store, "first", 1, 4)
    store.save()
    _add(store, "second", 1, 5)

    real_replace = os.replace

    def crash_on_pointer(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith("CURRENT"):
            raise OSError("simulated crash before the pointer swap")
        real_replace(src, dst)

    with mock.patch("retrieval.store.os.replace", side_effect=crash_on_pointer), pytest.raises(OSError):
        store.save()
    back = VectorStore.open(DIM, "test", tmp_path)
    assert {c.text for c in back.chunks.values()} == {"first part 0"}


def test_many_saves_keep_two_snapshots(tmp_path: Path) -> None:
    store = VectorStore(DIM, "test", tmp_path)
    for i in range(4):
        _add(store, f"doc {i}", 1, i)
        store.save()
    assert len([p for p in (tmp_path / "snapshots").iterdir() if p.is_dir()]) == 2
    assert len(VectorStore.open(DIM, "test", tmp_path)) == 4


def test_wrong_embedder_or_corrupt_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    store = VectorStore(DIM, "test", tmp_path)
    _add(store, "x", 1, 0)
    snap = store.save()
    with pytest.raises(IndexStateError, match="configured embedder"):
        VectorStore.open(DIM + 1, "other", tmp_path)
    assert snap is not None
    (snap / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexStateError, match="unreadable"):
        VectorStore.open(DIM, "test", tmp_path)


def test_empty_store_search() -> None:
    store = VectorStore(DIM, "test")
    assert store.search(unit_vectors(1, DIM), 3) == [[]]
    assert store.search(np.zeros((0, DIM), dtype=np.float32), 3) == []
