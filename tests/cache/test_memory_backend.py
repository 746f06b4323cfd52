from __future__ import annotations

import time

import pytest

from cache.backends import open_backend
from cache.errors import UnknownBackendError
from cache.memory_backend import MemoryBackend

pytestmark = pytest.mark.unit


def test_put_get_remove_contains() -> None:
    b = MemoryBackend(max_entries=4)
    b.put("k", b"v")
    assert b.contains("k") and b.get("k") == b"v"
    assert b.remove("k") and not b.remove("k")
    assert b.get("k") is None


def test_ttl_expiry() -> None:
    b = MemoryBackend()
    b.put("k", b"v", ttl_s=1)
    assert b.get("k") == b"v"
    time.sleep(1.05)
    assert b.get("k") is None and not b.contains("k")


def test_lru_bound() -> None:
    b = MemoryBackend(max_entries=2)
    b.put("a", b"1")
    b.put("b", b"2")
    b.get("a")
    b.put("c", b"3")
    assert b.get("b") is None and b.get("a") == b"1" and b.get("c") == b"3"


def test_batched_defaults_loop() -> None:
    b = MemoryBackend()
    b.put_many({"a": b"1", "b": b"2"})
    assert b.get_many(["a", "x", "b"]) == [b"1", None, b"2"]


def test_backend_by_url_scheme() -> None:
    assert open_backend("memory://").name == "memory"
    with pytest.raises(UnknownBackendError, match="schemes: memory, redis, rediss"):
        open_backend("memcached://localhost")
