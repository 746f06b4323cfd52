"""Redis backend (``redis://host:port/db``): entries live under a key prefix with Redis-side TTLs.

The sync calls serve the chunk-KV store (on the torch engine's step threads, never under its lock); the
``a*`` coroutines serve callers on an event loop (the response cache), on redis.asyncio clients.
"""

from __future__ import annotations

from typing import Any

from cache.base import BatchedMixin
from cache.errors import BackendUnavailableError
from core.redis_client import Guard, LoopClients, async_client, sync_client


class RedisBackend(BatchedMixin):
    name = "redis"

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ragyard:", ttl_s: int | None = None, **_: Any) -> RedisBackend:
        """redis://host:port/db or rediss://... (TLS)."""
        return cls(url, prefix=prefix, default_ttl_s=ttl_s)

    def __init__(self, url: str, *, prefix: str = "ragyard:", default_ttl_s: int | None = None) -> None:
        self.guard = Guard(f"redis cache {prefix!r}", BackendUnavailableError)
        self.client = sync_client(url, retries=1)
        self._aclients: LoopClients[Any] = LoopClients(lambda: async_client(url, retries=1))
        self.prefix = prefix
        self._default_ttl = default_ttl_s

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _ttl(self, ttl_s: int | None) -> int | None:
        ttl = ttl_s if ttl_s is not None else self._default_ttl
        return ttl if ttl else None

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.guard.call(fn, *args, **kwargs)

    async def _acall(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.guard.acall(lambda: getattr(self._aclients.get(), method)(*args, **kwargs))

    def ping(self) -> bool:
        return bool(self._call(self.client.ping))

    def contains(self, key: str) -> bool:
        return bool(self._call(self.client.exists, self._k(key)))

    def get(self, key: str) -> bytes | None:
        value = self._call(self.client.get, self._k(key))
        return None if value is None else bytes(value)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = self._call(self.client.mget, [self._k(k) for k in keys])
        return [None if v is None else bytes(v) for v in values]

    def put(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        self._call(self.client.set, self._k(key), value, ex=self._ttl(ttl_s))

    def remove(self, key: str) -> bool:
        return bool(self._call(self.client.delete, self._k(key)))

    async def aget(self, key: str) -> bytes | None:
        value = await self._acall("get", self._k(key))
        return None if value is None else bytes(value)

    async def aput(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        await self._acall("set", self._k(key), value, ex=self._ttl(ttl_s))

    async def aremove(self, key: str) -> bool:
        return bool(await self._acall("delete", self._k(key)))

    def close(self) -> None:
        self.client.close()
