from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from retrieval.documents import Document
from retrieval.errors import IndexStateError, IndexWriteError
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
    assert store.remove("shared", "doc") and len(store) == 0 and store.index.ntotal == 0
    assert not store.remove("shared", "doc")


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

    with mock.patch("retrieval.snapshots.os.replace", side_effect=crash_on_pointer), pytest.raises(IndexWriteError):
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


def _in(store: VectorStore, namespace: str, n_chunks: int, seed: int, doc_id: str = "") -> str:
    doc = Document(id=doc_id, text=f"{namespace} {seed}", namespace=namespace)
    store.upsert(doc, [(i, f"{namespace} {seed} part {i}") for i in range(n_chunks)], unit_vectors(n_chunks, DIM, seed))
    return doc.id


def test_search_inside_namespaces_returns_k_of_theirs_however_many_others_there_are() -> None:
    """The filter runs inside FAISS: a tenant with 2 chunks among 300 of others still gets both, and never
    one of another namespace's, even when that one is the nearest."""
    store = VectorStore(DIM, "test")
    for seed in range(100):
        _in(store, "shared" if seed % 2 else "acme", 3, seed)
    _in(store, "zed", 2, 1000)
    probe = store.chunks[max(store.chunks)]  # a zed chunk: the nearest to its own vector
    query = store.index.reconstruct(probe.chunk_id)[None, :]
    assert store.search(query, 1)[0][0].chunk.namespace == "zed"
    hits = store.search(query, 5, ["acme", "shared"])[0]
    assert len(hits) == 5 and {h.chunk.namespace for h in hits} <= {"acme", "shared"}
    assert [h.chunk.namespace for h in store.search(query, 10, ["zed"])[0]] == ["zed", "zed"]
    assert store.search(query, 3, ["nobody"])[0] == []
    # the bitmap follows the generation: a new zed document is found at once
    new = _in(store, "zed", 1, 2000)
    assert new in {h.chunk.doc_id for h in store.search(query, 10, ["zed"])[0]}


def test_namespaces_survive_a_restart_and_old_snapshots_read_as_shared(tmp_path: Path) -> None:
    import json

    store = VectorStore(DIM, "test", tmp_path)
    mine = _in(store, "acme", 2, 1)
    _in(store, "shared", 2, 2)
    store.save()
    back = VectorStore.open(DIM, "test", tmp_path)
    assert back.holders(mine) == ["acme"] and {d["namespace"] for d in back.documents()} == {"acme", "shared"}
    assert [d["id"] for d in back.documents(["acme"])] == [mine]
    # a snapshot written before namespaces existed (format 1: documents by id, no namespace): its documents
    # and chunks are the shared namespace's
    folder = tmp_path / "snapshots" / (tmp_path / "CURRENT").read_text().strip()
    data = json.loads((folder / "docstore.json").read_text())
    docs = {e.pop("id"): e for e in data.pop("documents")}
    for entry in docs.values():
        entry.pop("namespace")
    for chunk in data["chunks"]:
        chunk.pop("namespace")
    (folder / "docstore.json").write_text(json.dumps({**data, "docs": docs}))
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    old = VectorStore.open(DIM, "test", tmp_path)
    assert old.holders(mine) == ["shared"] and all(c.namespace == "shared" for c in old.chunks.values())
    assert old.fingerprint("shared", mine) is not None


def test_one_id_in_two_namespaces_is_two_documents_through_a_restart(tmp_path: Path) -> None:
    store = VectorStore(DIM, "test", tmp_path)
    for n, ns in enumerate(("acme", "zed")):
        store.upsert(Document(id="faq", text=f"{ns} faq", namespace=ns), [(0, f"{ns} faq")], unit_vectors(1, DIM, n))
    store.save()
    back = VectorStore.open(DIM, "test", tmp_path)
    assert back.holders("faq") == ["acme", "zed"] and len(back) == 2
    assert back.remove("zed", "faq") and back.holders("faq") == ["acme"]
    assert [c.text for c in back.chunks.values()] == ["acme faq"]


def test_the_same_content_in_two_namespaces_is_two_documents() -> None:
    a, b, s = (Document(text="same", namespace=ns) for ns in ("acme", "zed", "shared"))
    assert len({a.id, b.id, s.id}) == 3
    assert s.id == Document(text="same").id  # the shared namespace keeps the ids it always had


OPEN_IN_ANOTHER_PROCESS = """
import sys
sys.path.insert(0, sys.argv[2])
from retrieval.errors import IndexLockedError
from retrieval.store import VectorStore
try:
    store = VectorStore.open(16, "test", sys.argv[1], lock_timeout_s=0.2)
except IndexLockedError as exc:
    print("locked:", exc)
    sys.exit(3)
print("opened", len(store.docs))
"""


def test_one_writer_per_directory(tmp_path: Path) -> None:
    """A second process cannot open a directory a store holds (its saves would drop the first one's
    documents); it can once the store is closed. Reopening in the same process shares the lock."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    store = VectorStore.open(DIM, "test", tmp_path)
    _add(store, "held", 1, 0)
    store.save()
    again = VectorStore.open(DIM, "test", tmp_path)  # the same process
    run = [sys.executable, "-c", OPEN_IN_ANOTHER_PROCESS, str(tmp_path), root]
    held = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert held.returncode == 3 and "another writer" in held.stdout and "--url" in held.stdout
    again.close()
    assert subprocess.run(run, capture_output=True, text=True, timeout=60).returncode == 3  # still one holder
    store.close()
    free = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert free.returncode == 0 and "opened 1" in free.stdout


def test_leftovers_of_an_unfinished_save_are_pruned_at_open(tmp_path: Path) -> None:
    store = VectorStore.open(DIM, "test", tmp_path)
    _add(store, "kept", 1, 0)
    store.save()
    store.close()
    half = tmp_path / "snapshots" / ".000000000009.tmp"
    half.mkdir()
    (half / "index.faiss").write_bytes(b"partial")
    (tmp_path / ".CURRENT.tmp").write_text("000000000009")
    back = VectorStore.open(DIM, "test", tmp_path)
    assert not half.exists() and not (tmp_path / ".CURRENT.tmp").exists()
    assert len(back.docs) == 1
    back.close()
