"""Backends chosen by URL scheme, loaded lazily."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlparse

from cache.base import KVBackend
from cache.errors import UnknownBackendError

BACKENDS: dict[str, str] = {
    "memory": "cache.memory_backend:MemoryBackend",
    "redis": "cache.redis_backend:RedisBackend",
    "rediss": "cache.redis_backend:RedisBackend",
}


def open_backend(url: str, **options: Any) -> KVBackend:
    scheme = urlparse(url).scheme
    if scheme not in BACKENDS:
        raise UnknownBackendError(f"no cache backend for {url!r}; schemes: {', '.join(sorted(BACKENDS))}")
    module, _, attr = BACKENDS[scheme].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if scheme == "memory":
        return cls(max_entries=options.get("max_entries", 1024), default_ttl_s=options.get("ttl_s"))
    return cls(url, prefix=options.get("prefix", "ragyard:"), default_ttl_s=options.get("ttl_s"))
