"""Redis backend (``redis://host:port/db``): entries live under a key prefix with Redis-side TTLs."""

from __future__ import annotations

from typing import Any

from cache.base import BatchedMixin
from cache.errors import BackendUnavailableError


class RedisBackend(BatchedMixin):
    name = "redis"

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ragyard:", ttl_s: int | None = None, **_: Any) -> RedisBackend:
        """redis://host:port/db or rediss://... (TLS)."""
        return cls(url, prefix=prefix, default_ttl_s=ttl_s)

    def __init__(
        self, url: str, *, prefix: str = "ragyard:", default_ttl_s: int | None = None, client: Any = None
    ) -> None:
        import redis

        self._redis_errors = (redis.RedisError, OSError)
        self.client = client or redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix
        self._default_ttl = default_ttl_s

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._redis_errors as exc:
            raise BackendUnavailableError(f"redis: {exc}") from exc

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
        ttl = ttl_s if ttl_s is not None else self._default_ttl
        self._call(self.client.set, self._k(key), value, ex=ttl if ttl else None)

    def remove(self, key: str) -> bool:
        return bool(self._call(self.client.delete, self._k(key)))

    def close(self) -> None:
        self.client.close()
