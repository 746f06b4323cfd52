"""The key-value interface every cache backend implements (memory, Redis, ...)."""

from __future__ import annotations

from typing import Protocol


class KVBackend(Protocol):
    """Bytes in, bytes out, each entry with an optional time to live."""

    name: str

    def contains(self, key: str) -> bool: ...

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...

    def remove(self, key: str) -> bool: ...

    def close(self) -> None: ...

    # The same calls as coroutines, for callers on an event loop (the response cache in the gateway): a
    # network backend awaits its store, an in-process one answers at once.
    async def aget(self, key: str) -> bytes | None: ...

    async def aput(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...

    async def aremove(self, key: str) -> bool: ...


class InProcessAsyncMixin:
    """The coroutines of a backend that never waits on I/O: the sync calls, run in place."""

    async def aget(self, key: str) -> bytes | None:
        return self.get(key)  # type: ignore[attr-defined]

    async def aput(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        self.put(key, value, ttl_s)  # type: ignore[attr-defined]

    async def aremove(self, key: str) -> bool:
        return self.remove(key)  # type: ignore[attr-defined]


class BatchedMixin:
    """Batched calls as loops over the single ones; a backend overrides them where it can do better."""

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(k) for k in keys]  # type: ignore[attr-defined]

    def put_many(self, items: dict[str, bytes], ttl_s: int | None = None) -> None:
        for k, v in items.items():
            self.put(k, v, ttl_s)  # type: ignore[attr-defined]
