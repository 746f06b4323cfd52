from __future__ import annotations

import asyncio

import pytest

from cache.errors import BackendUnavailableError
from cache.memory_backend import MemoryBackend
from cache.response_cache import ResponseCache

pytestmark = pytest.mark.unit


def test_key_normalises_question_and_covers_the_plan() -> None:
    k1 = ResponseCache.key(question="What is  Ragyard?", plan={"policy": "single"}, index_generation=1)
    k2 = ResponseCache.key(question="what is ragyard?", plan={"policy": "single"}, index_generation=1)
    k3 = ResponseCache.key(question="what is ragyard?", plan={"policy": "none"}, index_generation=1)
    k4 = ResponseCache.key(question="what is ragyard?", plan={"policy": "single"}, index_generation=2)
    assert k1 == k2 and len({k2, k3, k4}) == 3
    # the closing mark and a space before it are typing, not another question; words still are
    typed = ("What is X ?", "what is x", "WHAT IS X?!")
    same = {ResponseCache.key(question=q, plan={"policy": "single"}) for q in typed}
    assert len(same) == 1 and ResponseCache.key(question="what is y", plan={"policy": "single"}) not in same


def test_round_trip_and_corrupt_entry_dropped() -> None:
    backend = MemoryBackend()
    cache = ResponseCache(backend, ttl_s=60)

    async def run() -> None:
        await cache.put("k", {"answer": "42"})
        assert await cache.get("k") == {"answer": "42"}
        backend.put("bad", b"\xff not json")
        assert await cache.get("bad") is None
        assert not backend.contains("bad")
        backend.put("list", b"[1, 2]")
        assert await cache.get("list") is None

    asyncio.run(run())


class _Broken(MemoryBackend):
    def get(self, key: str) -> bytes | None:
        raise BackendUnavailableError("down")

    def put(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        raise BackendUnavailableError("down")


def test_failing_backend_is_a_miss_not_an_error() -> None:
    cache = ResponseCache(_Broken())

    async def run() -> None:
        await cache.put("k", {"a": 1})
        assert await cache.get("k") is None

    asyncio.run(run())
