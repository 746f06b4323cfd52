"""The Redis clients every store opens, against a real redis-server behind the chaos suite's fault proxy:
pooled connections come back after a restart and a reset (redis-py's asyncio Retry), a blackholed store
fails within the call deadline and then at once (the breaker), a slow one is waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.chaos.proxy import FaultProxy
from bench.chaos.redis_server import RedisServer
from cache.errors import BackendUnavailableError
from cache.redis_backend import RedisBackend
from core.redis_client import BREAKER_RESET_S, CALL_DEADLINE_S

pytestmark = [pytest.mark.redis, pytest.mark.integration]


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[RedisServer, FaultProxy]]:
    server = RedisServer(tmp_path / "redis").start()
    proxy = FaultProxy(server.port).start()
    try:
        yield server, proxy
    finally:
        proxy.stop()
        server.stop()


async def _burst(backend: RedisBackend, tag: str, n: int = 30) -> list[Any]:
    return await asyncio.gather(*(backend.aput(f"{tag}{i}", b"v") for i in range(n)), return_exceptions=True)


def test_pooled_connections_recover_from_a_restart_and_a_reset(faulty: tuple[RedisServer, FaultProxy]) -> None:
    server, proxy = faulty
    backend = RedisBackend(proxy.url, prefix="t:")

    async def run() -> None:
        assert not [e for e in await _burst(backend, "a") if e is not None]  # 30 pooled connections
        server.kill()
        server.start()  # from its append-only file
        assert await backend.aget("a7") == b"v"  # kept
        assert not [e for e in await _burst(backend, "b") if e is not None]
        proxy.set("refuse")  # every open connection reset
        proxy.set("pass")
        assert not [e for e in await _burst(backend, "c") if e is not None]

    asyncio.run(run())
    assert backend.get("c3") == b"v"  # and the sync client alike


def test_a_blackholed_store_fails_within_the_deadline_then_at_once(faulty: tuple[RedisServer, FaultProxy]) -> None:
    _, proxy = faulty
    backend = RedisBackend(proxy.url, prefix="t:")

    async def run() -> tuple[list[float], list[str]]:
        await backend.aput("k", b"v")
        proxy.set("blackhole")
        took, said = [], []
        for _ in range(4):
            started = time.perf_counter()
            with pytest.raises(BackendUnavailableError) as caught:
                await backend.aget("k")
            took.append(time.perf_counter() - started)
            said.append(str(caught.value))
        return took, said

    took, said = asyncio.run(run())
    # Each call gives up at its deadline instead of waiting on the socket for good ...
    assert all(t < CALL_DEADLINE_S + 1.0 for t in took[:3]), took
    # ... and the third failure in a row opens the breaker: the calls after it are not even tried.
    assert all("not called for" not in s for s in said[:2]), said
    assert all("not called for" in s for s in said[2:]), said
    proxy.set("pass")
    time.sleep(BREAKER_RESET_S + 0.2)
    assert asyncio.run(backend.aget("k")) == b"v"


def test_a_slow_store_is_waited_for(faulty: tuple[RedisServer, FaultProxy]) -> None:
    _, proxy = faulty
    backend = RedisBackend(proxy.url, prefix="t:")
    backend.put("k", b"v")
    proxy.set("delay", 0.3)
    started = time.perf_counter()
    assert asyncio.run(backend.aget("k")) == b"v"
    assert time.perf_counter() - started >= 0.3
