"""Tenant budgets: reserve a request's worst case before it runs, settle its actual use after.

A reservation is granted only if spent + reserved + this request's worst case stays within the
period's limit, so concurrent requests, on any number of replicas, can never spend past a budget.
In Redis the check and the increment are one Lua script (atomic on the server); the in-memory
ledger does the same under a lock, for the embedded default.

Tokens are integers; money is kept in integer micro-units (1e-6) so both add up exactly.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

from cache.errors import BackendUnavailableError

MICRO = 1_000_000
_FIELDS = ("spent_tokens", "reserved_tokens", "spent_micros", "reserved_micros")


@dataclass(frozen=True)
class Usage:
    spent_tokens: int = 0
    reserved_tokens: int = 0
    spent_micros: int = 0
    reserved_micros: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "spent_tokens": self.spent_tokens,
            "reserved_tokens": self.reserved_tokens,
            "spent_cost": self.spent_micros / MICRO,
            "reserved_cost": self.reserved_micros / MICRO,
        }


def period_key(period: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def seconds_to_reset(period: str, now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    if period == "day":
        nxt = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
    return max(1, int((nxt - now).total_seconds()) + 1)


class BudgetLedger(Protocol):
    name: str

    def reserve(
        self, tenant: str, period: str, tokens: int, micros: int, limit_tokens: int | None, limit_micros: int | None
    ) -> tuple[bool, Usage]: ...

    def settle(
        self,
        tenant: str,
        period: str,
        reserved_tokens: int,
        reserved_micros: int,
        actual_tokens: int,
        actual_micros: int,
    ) -> Usage: ...

    def usage(self, tenant: str, period: str) -> Usage: ...


class MemoryLedger:
    @classmethod
    def from_url(cls, url: str, *, prefix: str = "") -> MemoryLedger:
        return cls()

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], list[int]] = {}

    def _row(self, tenant: str, period: str) -> list[int]:
        key = (tenant, period_key(period))
        if key not in self._rows:
            # Rows of past periods are dropped as the new one starts.
            for old in [k for k in self._rows if k[0] == tenant]:
                del self._rows[old]
            self._rows[key] = [0, 0, 0, 0]
        return self._rows[key]

    def reserve(
        self, tenant: str, period: str, tokens: int, micros: int, limit_tokens: int | None, limit_micros: int | None
    ) -> tuple[bool, Usage]:
        with self._lock:
            row = self._row(tenant, period)
            if limit_tokens is not None and row[0] + row[1] + tokens > limit_tokens:
                return False, Usage(*row)
            if limit_micros is not None and row[2] + row[3] + micros > limit_micros:
                return False, Usage(*row)
            row[1] += tokens
            row[3] += micros
            return True, Usage(*row)

    def settle(
        self,
        tenant: str,
        period: str,
        reserved_tokens: int,
        reserved_micros: int,
        actual_tokens: int,
        actual_micros: int,
    ) -> Usage:
        with self._lock:
            row = self._row(tenant, period)
            row[1] = max(0, row[1] - reserved_tokens)
            row[3] = max(0, row[3] - reserved_micros)
            row[0] += actual_tokens
            row[2] += actual_micros
            return Usage(*row)

    def usage(self, tenant: str, period: str) -> Usage:
        with self._lock:
            return Usage(*self._row(tenant, period))


# KEYS[1]: the tenant's hash for the period. ARGV: tokens, token limit (-1 = none), micros, micro
# limit (-1 = none), TTL seconds. Returns {granted, spent_t, reserved_t, spent_c, reserved_c}.
_RESERVE = """
local h = redis.call('HMGET', KEYS[1], 'spent_tokens', 'reserved_tokens', 'spent_micros', 'reserved_micros')
local st, rt, sc, rc = tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0'), tonumber(h[4] or '0')
local t, lt, c, lc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if (lt >= 0 and st + rt + t > lt) or (lc >= 0 and sc + rc + c > lc) then
  return {0, st, rt, sc, rc}
end
rt = redis.call('HINCRBY', KEYS[1], 'reserved_tokens', t)
rc = redis.call('HINCRBY', KEYS[1], 'reserved_micros', c)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, st, rt, sc, rc}
"""

# ARGV: reserved tokens, reserved micros, actual tokens, actual micros, TTL seconds. (`0 - x`, not
# `-x`: Lua formats -0 as "-0", which HINCRBY refuses.)
_SETTLE = """
local rt = redis.call('HINCRBY', KEYS[1], 'reserved_tokens', 0 - tonumber(ARGV[1]))
local rc = redis.call('HINCRBY', KEYS[1], 'reserved_micros', 0 - tonumber(ARGV[2]))
if rt < 0 then rt = 0; redis.call('HSET', KEYS[1], 'reserved_tokens', 0) end
if rc < 0 then rc = 0; redis.call('HSET', KEYS[1], 'reserved_micros', 0) end
local st = redis.call('HINCRBY', KEYS[1], 'spent_tokens', tonumber(ARGV[3]))
local sc = redis.call('HINCRBY', KEYS[1], 'spent_micros', tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, st, rt, sc, rc}
"""


class RedisLedger:
    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ragyard:budget:") -> RedisLedger:
        return cls(url, prefix=prefix)

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "ragyard:budget:", client: Any = None) -> None:
        import redis

        self._errors = (redis.RedisError, OSError)
        self.client = client or redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix
        self._reserve = self.client.register_script(_RESERVE)
        self._settle = self.client.register_script(_SETTLE)

    def _key(self, tenant: str, period: str) -> str:
        return f"{self.prefix}{tenant}:{period_key(period)}"

    @staticmethod
    def _ttl(period: str) -> int:
        # Kept a while past the period's end, so the last period can still be read.
        return seconds_to_reset(period) + 7 * 86400

    def _run(self, script: Any, key: str, args: list[int]) -> list[int]:
        try:
            return [int(x) for x in script(keys=[key], args=args)]
        except self._errors as exc:
            raise BackendUnavailableError(f"budget store (redis): {exc}") from exc

    def reserve(
        self, tenant: str, period: str, tokens: int, micros: int, limit_tokens: int | None, limit_micros: int | None
    ) -> tuple[bool, Usage]:
        lt = -1 if limit_tokens is None else limit_tokens
        lc = -1 if limit_micros is None else limit_micros
        out = self._run(self._reserve, self._key(tenant, period), [tokens, lt, micros, lc, self._ttl(period)])
        return bool(out[0]), Usage(out[1], out[2], out[3], out[4])

    def settle(
        self,
        tenant: str,
        period: str,
        reserved_tokens: int,
        reserved_micros: int,
        actual_tokens: int,
        actual_micros: int,
    ) -> Usage:
        out = self._run(
            self._settle,
            self._key(tenant, period),
            [reserved_tokens, reserved_micros, actual_tokens, actual_micros, self._ttl(period)],
        )
        return Usage(out[1], out[2], out[3], out[4])

    def usage(self, tenant: str, period: str) -> Usage:
        try:
            values = self.client.hmget(self._key(tenant, period), list(_FIELDS))
        except self._errors as exc:
            raise BackendUnavailableError(f"budget store (redis): {exc}") from exc
        return Usage(*(int(v or 0) for v in values))


# Budget stores by URL scheme; a new one is a class with ``from_url(url, *, prefix)`` registered here.
LEDGERS: dict[str, Any] = {}


def open_ledger(url: str | None, *, prefix: str = "ragyard:budget:") -> BudgetLedger:
    scheme = urlparse(url or "memory://").scheme
    cls = LEDGERS.get(scheme)
    if cls is None:
        raise ValueError(f"no budget store for {url!r}; schemes: {', '.join(s + '://' for s in sorted(LEDGERS))}")
    ledger: BudgetLedger = cls.from_url(url or "memory://", prefix=prefix)
    return ledger


LEDGERS.update({"memory": MemoryLedger, "redis": RedisLedger, "rediss": RedisLedger, "unix": RedisLedger})
