"""Redis clients as every Ragyard store opens them: short timeouts, and redis-py's own `Retry` with
exponential backoff for a dropped connection or a timeout, so a blip costs a retry, not a request; and a
`Guard` per store: a deadline for each call with its retries, and a circuit breaker (pybreaker) that
stops calling a store that failed several times running, so while Redis is down (or blackholed) each
request fails over at once instead of waiting out every timeout.

The asyncio clients are per event loop (``LoopClients``): a redis.asyncio connection belongs to the loop
that opened it, and one process can run several loops over its life (a Serve replica runs one; a CLI
command or a test that calls ``asyncio.run`` twice runs two).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import pybreaker

from core.errors import StoreUnavailableError

T = TypeVar("T")

# Seconds a command may take before it counts as failed, and the connect limit.
SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 2.0
# The most one call may take with its retries (a blackholed Redis would otherwise cost each request
# every retry's full socket timeout).
CALL_DEADLINE_S = 3.0
# Failures in a row that open a store's breaker, and the seconds before it lets one call through again.
BREAKER_FAILURES = 3
BREAKER_RESET_S = 2.0


def _options(retries: int, timeout_s: float, *, asynchronous: bool) -> dict[str, Any]:
    import redis
    from redis.backoff import ExponentialBackoff

    # The asyncio client needs redis.asyncio's Retry: given the sync one, it awaits a call the Retry never
    # looked inside, and no error is ever retried.
    if asynchronous:
        from redis.asyncio.retry import Retry as AsyncRetry

        retry: Any = AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries)
    else:
        from redis.retry import Retry

        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries)
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": retry,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }


# Connections one client may open. redis-py's default pool refuses past 100 ("Too many connections"), which a
# burst of concurrent requests reaches and the breaker would then read as a store that is down.
MAX_CONNECTIONS = 1024


def sync_client(url: str, *, retries: int = 3, timeout_s: float = SOCKET_TIMEOUT_S) -> Any:
    import redis

    return redis.Redis.from_url(
        url, max_connections=MAX_CONNECTIONS, **_options(retries, timeout_s, asynchronous=False)
    )


def async_client(url: str, *, retries: int = 3, timeout_s: float = SOCKET_TIMEOUT_S) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(
        url, max_connections=MAX_CONNECTIONS, **_options(retries, timeout_s, asynchronous=True)
    )


class LoopClients(Generic[T]):
    """``build()`` once per running event loop, kept as long as that loop lives."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        made = self._by_loop.get(loop)
        if made is None:
            made = self._by_loop[loop] = self._build()
        return made


class Guard:
    """One store's calls, sync or async, under a deadline and a circuit breaker. Every failure comes out as
    ``error`` (each layer names its own: the caches' `BackendUnavailableError`, the corpus log's) naming the
    store; callers decide whether that fails the request (budgets, rate limits, document writes: closed) or
    counts as a miss (caches)."""

    def __init__(self, what: str, error: type[Exception] = StoreUnavailableError) -> None:
        self.what = what
        self.error = error
        # Anything a client call raises means the store did not answer: besides redis-py's and socket errors,
        # redis.asyncio raises a bare RuntimeError ("unable to perform operation on <TCPTransport closed=True>")
        # when a reset lands mid-command. (CancelledError is a BaseException and passes through.)
        self._errors: tuple[type[BaseException], ...] = (pybreaker.CircuitBreakerError, Exception)
        self.breaker = pybreaker.CircuitBreaker(fail_max=BREAKER_FAILURES, reset_timeout=BREAKER_RESET_S, name=what)

    def _unavailable(self, exc: BaseException) -> Exception:
        if isinstance(exc, pybreaker.CircuitBreakerError):
            return self.error(
                f"{self.what}: not called for {BREAKER_RESET_S:g} s after {BREAKER_FAILURES} failures in a row"
            )
        return self.error(f"{self.what}: {exc or type(exc).__name__}")

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            # `calling()`, not `call()`: pybreaker's call holds its lock for the whole call, which would run
            # one store call at a time.
            with self.breaker.calling():
                return fn(*args, **kwargs)
        except self._errors as exc:
            raise self._unavailable(exc) from exc

    async def acall(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            with self.breaker.calling():
                async with asyncio.timeout(CALL_DEADLINE_S):
                    return await make()
        except self._errors as exc:
            raise self._unavailable(exc) from exc
