from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cache.backends import open_backend
from cache.errors import BackendUnavailableError
from cache.redis_backend import RedisBackend
from cache.response_cache import ResponseCache

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def backend(redis_url: str) -> RedisBackend:
    b = open_backend(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    assert isinstance(b, RedisBackend)
    return b


def test_same_interface_as_memory(backend: RedisBackend) -> None:
    assert backend.ping()
    backend.put("k", b"v")
    assert backend.contains("k") and backend.get("k") == b"v"
    backend.put_many({"a": b"1", "b": b"2"})
    assert backend.get_many(["a", "missing", "b"]) == [b"1", None, b"2"]
    assert backend.remove("k") and not backend.remove("k") and backend.get("k") is None


def test_ttl_is_enforced_by_redis(backend: RedisBackend) -> None:
    backend.put("short", b"v", ttl_s=1)
    assert backend.client.ttl(backend.prefix + "short") in (0, 1)
    time.sleep(1.2)
    assert backend.get("short") is None


def test_response_cache_over_redis_and_corrupt_entry(backend: RedisBackend) -> None:
    cache = ResponseCache(backend, ttl_s=30)

    async def run() -> None:
        await cache.put("answer", {"answer": "Paris", "citations": []})
        assert await cache.get("answer") == {"answer": "Paris", "citations": []}
        backend.put("garbled", b"{truncated")
        assert await cache.get("garbled") is None and not backend.contains("garbled")
        assert await cache.get("answer") == {"answer": "Paris", "citations": []}
        assert 0 < backend.client.ttl(backend.prefix + "answer") <= 30

    asyncio.run(run())


def test_unreachable_redis_is_a_backend_error_then_skipped() -> None:
    """A refused store is a backend error (a miss for the cache); after a few in a row the breaker opens and
    the calls after it fail at once, sync and async alike."""
    from tests.utils import free_port

    b = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BackendUnavailableError):
        b.get("k")
    assert asyncio.run(ResponseCache(b).get("k")) is None
    with pytest.raises(BackendUnavailableError):
        asyncio.run(b.aput("k", b"v"))
    with pytest.raises(BackendUnavailableError, match="not called for"):
        b.get("k")
    with pytest.raises(BackendUnavailableError, match="not called for"):
        asyncio.run(b.aget("k"))
