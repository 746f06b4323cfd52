"""Cached answers to repeated greedy questions, over any KV backend.

An entry knows its sources: the documents (namespace, id, fingerprint) whose chunks the answer was built from,
and the corpus generation it was built at. It is served while every source still has that fingerprint, so a
write to one of them (or its removal) retires exactly the answers built from it, and writes elsewhere in the
corpus (another document, another tenant's) leave them be.

A cache that fails never fails the request: errors are logged, counted and treated as misses. Its calls
are coroutines (the gateway's event loop never waits on Redis).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

from cache.base import KVBackend
from cache.errors import CacheError
from core.metrics import counter

logger = logging.getLogger(__name__)

CACHE_REQUESTS = counter(
    "ragyard_response_cache_requests_total",
    "Response cache lookups and writes by backend and result.",
    ["backend", "op", "result"],
)

# v2: entries hold {"answer", "sources", "generation"}, keys no longer hold the corpus generation.
KEY_VERSION = "v2"


def _normalise(text: str) -> str:
    """Case, spacing and the closing mark do not make another question: "What is X ?" is "what is x"."""
    text = re.sub(r"\s+([?.!,;:])", r"\1", " ".join(text.split()).lower())
    return text.rstrip("?.! ")


class ResponseCache:
    def __init__(self, backend: KVBackend, ttl_s: int | None = None) -> None:
        self.backend = backend
        self.ttl_s = ttl_s

    @staticmethod
    def key(**parts: Any) -> str:
        """A stable key over everything that changes the answer (question, plan, index generation...)."""
        if "question" in parts and isinstance(parts["question"], str):
            parts["question"] = _normalise(parts["question"])
        blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
        return f"resp:{KEY_VERSION}:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.backend.aget(key)
        except CacheError as exc:
            CACHE_REQUESTS.labels(self.backend.name, "get", "error").inc()
            logger.warning("response cache get failed: %s", exc)
            return None
        if raw is None:
            CACHE_REQUESTS.labels(self.backend.name, "get", "miss").inc()
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            # A corrupt entry is dropped, never served.
            CACHE_REQUESTS.labels(self.backend.name, "get", "corrupt").inc()
            await self._safe_remove(key)
            return None
        if not isinstance(value, dict):
            CACHE_REQUESTS.labels(self.backend.name, "get", "corrupt").inc()
            await self._safe_remove(key)
            return None
        CACHE_REQUESTS.labels(self.backend.name, "get", "hit").inc()
        return value

    async def put(self, key: str, value: dict[str, Any]) -> None:
        try:
            await self.backend.aput(key, json.dumps(value).encode("utf-8"), self.ttl_s)
            CACHE_REQUESTS.labels(self.backend.name, "put", "ok").inc()
        except CacheError as exc:
            CACHE_REQUESTS.labels(self.backend.name, "put", "error").inc()
            logger.warning("response cache put failed: %s", exc)

    async def remove(self, key: str, reason: str = "stale") -> None:
        """Drop an entry found out of date (``reason`` counts it)."""
        CACHE_REQUESTS.labels(self.backend.name, "get", reason).inc()
        await self._safe_remove(key)

    async def _safe_remove(self, key: str) -> None:
        try:
            await self.backend.aremove(key)
        except CacheError as exc:
            logger.warning("response cache remove failed: %s", exc)

    def close(self) -> None:
        self.backend.close()
