"""In-process backend (the embedded default): an LRU bounded by entry count, each entry with a TTL."""

from __future__ import annotations

import threading
import time
from typing import Any

from cachetools import LRUCache

from cache.base import BatchedMixin, InProcessAsyncMixin


class MemoryBackend(BatchedMixin, InProcessAsyncMixin):
    name = "memory"

    @classmethod
    def from_url(cls, url: str, *, max_entries: int = 1024, ttl_s: int | None = None, **_: Any) -> MemoryBackend:
        """memory:// (a process-local LRU; the URL carries nothing else)."""
        return cls(max_entries=max_entries, default_ttl_s=ttl_s)

    def __init__(self, max_entries: int = 1024, default_ttl_s: int | None = None) -> None:
        self._data: LRUCache[str, tuple[bytes, float | None]] = LRUCache(maxsize=max_entries)
        self._default_ttl = default_ttl_s
        self._lock = threading.Lock()

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return value

    def contains(self, key: str) -> bool:
        with self._lock:
            return self._live(key) is not None

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key)

    def put(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        ttl = ttl_s if ttl_s is not None else self._default_ttl
        expires = time.monotonic() + ttl if ttl else None
        with self._lock:
            self._data[key] = (bytes(value), expires)

    def remove(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        with self._lock:
            self._data.clear()
