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


class BatchedMixin:
    """Batched calls as loops over the single ones; a backend overrides them where it can do better."""

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(k) for k in keys]  # type: ignore[attr-defined]

    def put_many(self, items: dict[str, bytes], ttl_s: int | None = None) -> None:
        for k, v in items.items():
            self.put(k, v, ttl_s)  # type: ignore[attr-defined]
