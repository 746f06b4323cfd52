"""Backends chosen by URL scheme, loaded lazily. A backend is one module whose class builds itself from a
URL (``from_url(url, *, prefix, max_entries, ttl_s)``), registered here by scheme."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from cache.base import KVBackend
from cache.errors import UnknownBackendError
from core.loading import load_object

BACKENDS: dict[str, str] = {
    "memory": "cache.memory_backend:MemoryBackend",
    "redis": "cache.redis_backend:RedisBackend",
    "rediss": "cache.redis_backend:RedisBackend",
}


def open_backend(url: str, **options: Any) -> KVBackend:
    scheme = urlparse(url).scheme
    if scheme not in BACKENDS:
        raise UnknownBackendError(f"no cache backend for {url!r}; schemes: {', '.join(sorted(BACKENDS))}")
    cls = load_object(BACKENDS[scheme])
    backend: KVBackend = cls.from_url(url, **options)
    return backend


def chunk_cache_backend(backend_url: str | None) -> KVBackend | None:
    """The chunk-KV cache's second tier: ``backend_url``, else ``REDIS_URL`` when set; None (memory only) for
    neither or a ``memory:`` URL (the worker's own memory tier is the first tier already)."""
    import os

    url = backend_url or os.environ.get("REDIS_URL") or None
    return open_backend(url) if url and not url.startswith("memory:") else None
