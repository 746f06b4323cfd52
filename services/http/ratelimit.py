"""Per-tenant rate limits at the edge: requests and tokens per minute (the `limits` library's sliding
window counters, in Redis when the budgets are, so every gateway replica counts together) and a cap on
answers in progress. Refusals are 429 `rate_limit_exceeded` with `Retry-After`; every response to a
limited tenant carries OpenAI's `x-ratelimit-*` headers."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cache.errors import BackendUnavailableError
from core.redis_client import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, Guard, async_client
from router.sla import PolicyStore, RateLimits
from services.errors import RateLimitError, ServiceUnavailableError
from services.http.auth import KEYED_PATHS
from services.http.errors import json_error

logger = logging.getLogger(__name__)

# Routes that run a model or the embedder for the caller: each holds a concurrency slot while it runs, is refused
# when the tenant's tokens per minute are spent, and its tokens count towards them. A vector store's search
# (`/v1/vector_stores/{id}/search`) embeds its query: it is work too.
WORK_PATHS = frozenset({"/v1/chat/completions", "/v1/qa", "/v1/completions", "/v1/embeddings"})


def is_work(path: str) -> bool:
    return path in WORK_PATHS or (path.startswith("/v1/vector_stores/") and path.endswith("/search"))


# Every `/v1/` route counts against requests per minute, and so do vLLM's tokenizer routes beside them.
COUNTED_PATHS = KEYED_PATHS

# KEYS: the tenant's slot set. ARGV: now, lease end, slot id, cap. Drops slots whose lease passed (a gateway
# that died holding them), then takes one if fewer than the cap are held. Returns {taken, held}.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[4]) then return {0, held} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], 3600)
return {1, held + 1}
"""


class Slots:
    """A counting semaphore per tenant with leases, in Redis or in memory. Written here because neither
    `limits` nor redis-py has one (limits counts rates, redis-py locks one holder); a slot a dead gateway
    held frees itself when its lease passes."""

    def __init__(self, url: str | None, lease_s: float = 900.0, prefix: str = "ragyard:slots:") -> None:
        self.lease_s = lease_s
        self.prefix = prefix
        self._memory: dict[str, dict[str, float]] = {}
        self._redis: Any = None
        if url and url.startswith(("redis://", "rediss://", "unix://")):
            self._redis = async_client(url, retries=2)
            self._acquire = self._redis.register_script(_ACQUIRE)

    async def acquire(self, tenant: str, cap: int) -> str | None:
        slot, now = uuid.uuid4().hex, time.time()
        if self._redis is None:
            held = self._memory.setdefault(tenant, {})
            for old in [s for s, until in held.items() if until <= now]:
                del held[old]
            if len(held) >= cap:
                return None
            held[slot] = now + self.lease_s
            return slot
        taken, _ = await self._acquire(keys=[self.prefix + tenant], args=[now, now + self.lease_s, slot, cap])
        return slot if int(taken) else None

    async def release(self, tenant: str, slot: str) -> None:
        if self._redis is None:
            self._memory.get(tenant, {}).pop(slot, None)
        else:
            await self._redis.zrem(self.prefix + tenant, slot)


@dataclass
class _Window:
    limit: int
    remaining: int
    reset_s: float


class RateLimiter:
    def __init__(self, url: str | None) -> None:
        redis = bool(url) and str(url).startswith(("redis://", "rediss://", "unix://"))
        self.storage: Storage = (
            RedisStorage(
                "async+" + str(url),
                implementation="redispy",
                key_prefix="ragyard:rate",
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
            )
            if redis
            else MemoryStorage()
        )
        # A deadline and a breaker over every call to the store: a Redis that is down refuses at once.
        self.guard = Guard("rate-limit store (redis)", BackendUnavailableError)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.slots = Slots(url if redis else None)

    async def _stats(self, item: Any, *identifiers: str) -> _Window:
        stats = await self.limiter.get_window_stats(item, *identifiers)
        return _Window(item.amount, max(0, stats.remaining), max(0.0, stats.reset_time - time.time()))

    async def check(self, tenant: str, limits: RateLimits, answering: bool) -> tuple[dict[str, str], str | None]:
        """Count the request; the headers to send, and the reason it is refused (None: it may run)."""
        headers: dict[str, str] = {}
        refused = None
        if limits.rpm is not None:
            item = RateLimitItemPerMinute(limits.rpm)
            allowed = await self.limiter.hit(item, "rpm", tenant)
            w = await self._stats(item, "rpm", tenant)
            headers.update(_headers("requests", w))
            if not allowed:
                refused = f"{limits.rpm} requests per minute"
        if limits.tpm is not None:
            item = RateLimitItemPerMinute(limits.tpm)
            w = await self._stats(item, "tpm", tenant)
            headers.update(_headers("tokens", w))
            if answering and refused is None and not await self.limiter.test(item, "tpm", tenant):
                refused = f"{limits.tpm} tokens per minute"
        return headers, refused

    async def spend_tokens(self, tenant: str, limits: RateLimits, tokens: int) -> None:
        """Count an answer's tokens. The window refuses a hit larger than what is left, so an answer that
        overshoots fills it to the limit: the minute is spent either way."""
        if limits.tpm is None or tokens <= 0:
            return
        item = RateLimitItemPerMinute(limits.tpm)
        left = (await self.limiter.get_window_stats(item, "tpm", tenant)).remaining
        if left > 0:
            await self.limiter.hit(item, "tpm", tenant, cost=min(tokens, left))


def _headers(kind: str, w: _Window) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(w.limit),
        f"x-ratelimit-remaining-{kind}": str(w.remaining),
        f"x-ratelimit-reset-{kind}": f"{math.ceil(w.reset_s)}s",
    }


class RateLimitMiddleware:
    """Applies the tenant's `limits` from the SLA policy to its `/v1/` requests and the tokenizer routes (after
    the key middleware has named the tenant). A route of WORK_PATHS puts its request's running token count in
    ``scope["state"]["ran"]``; those tokens count towards TPM once the response is out."""

    def __init__(self, app: ASGIApp, sla_policy: PolicyStore | None, url: str | None) -> None:
        self.app = app
        self.sla_policy = sla_policy
        self.limiter = RateLimiter(url) if sla_policy is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state") or {}
        tenant = state.get("tenant")
        counted_path = scope.get("path", "").startswith("/v1/") or scope.get("path") in COUNTED_PATHS
        if scope["type"] != "http" or self.limiter is None or tenant is None or not counted_path:
            await self.app(scope, receive, send)
            return
        assert self.sla_policy is not None
        entry = self.sla_policy.policy.tenants.get(tenant)
        limits = entry.limits if entry is not None else None
        if limits is None:
            await self.app(scope, receive, send)
            return
        answering = is_work(scope["path"])
        limiter = self.limiter

        async def admit() -> tuple[dict[str, str], str | None, str | None]:
            headers, refused = await limiter.check(tenant, limits, answering)
            slot = None
            if refused is None and answering and limits.max_concurrent is not None:
                slot = await limiter.slots.acquire(tenant, limits.max_concurrent)
                if slot is None:
                    refused = f"{limits.max_concurrent} answers in progress at once"
            return headers, refused, slot

        try:
            headers, refused, slot = await limiter.guard.acall(admit)
        except Exception as exc:  # noqa: BLE001 - the limits store is down: fail closed, as budgets do
            logger.warning("rate limits unavailable: %s", exc)
            down = ServiceUnavailableError(
                f"the rate-limit store cannot be reached: {exc}", code="rate_limits_unavailable"
            )
            await json_error(down)(scope, receive, send)
            return
        if refused is not None:
            error = RateLimitError(f"rate limit reached for tenant {tenant!r}: {refused}")
            error.retry_after = max(1, min(60, int(_reset(headers))))
            response = json_error(error)
            response.headers.update(headers)
            await response(scope, receive, send)
            return

        counted = False

        async def count_tokens() -> None:
            nonlocal counted
            if counted:
                return
            counted = True
            ran = state.get("ran")
            tokens = ran.prompt_tokens + ran.completion_tokens if ran is not None else 0
            if tokens:
                try:
                    await limiter.guard.acall(lambda: limiter.spend_tokens(tenant, limits, tokens))
                except Exception as exc:  # noqa: BLE001 - the answer is out; the count is best effort
                    logger.warning("could not count %d tokens against %s's TPM: %s", tokens, tenant, exc)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(headers)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the last byte goes out, so the client's next request sees them.
                await count_tokens()
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        finally:
            if slot is not None:
                try:
                    await limiter.guard.acall(lambda: limiter.slots.release(tenant, slot))
                except Exception as exc:  # noqa: BLE001 - the store is down: the slot frees itself at its lease
                    logger.warning("could not release %s's answer slot (freed at its lease): %s", tenant, exc)
            await count_tokens()  # a response that never finished (the client left) counts too


def _reset(headers: dict[str, str]) -> float:
    resets = [float(v.rstrip("s")) for k, v in headers.items() if k.startswith("x-ratelimit-reset-")]
    return max(resets) if resets else 1.0
