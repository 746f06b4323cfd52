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
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

from cache.errors import BackendUnavailableError
from core.redis_client import Guard, LoopClients, async_client

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


@dataclass(frozen=True)
class Reservation:
    """A request's hold on a tenant's budget, as the ledger keeps it until settled or expired. It keeps the
    period key it was made in: a request that crosses midnight settles against the day it started."""

    ticket: str
    tenant: str
    period_key: str
    tokens: int
    micros: int


class BudgetLedger(Protocol):
    """Reservations are tickets: `reserve` opens one under a caller-chosen unique id with a lease,
    `settle` closes it (charging what was used) and `expire` releases those whose lease has passed,
    whichever router made them. Each is idempotent per ticket id, so a call retried after a lost reply
    neither reserves nor charges twice. Every call is a coroutine: a slow store delays the request that
    waits on it, never the router's event loop."""

    name: str

    async def reserve(
        self,
        ticket: str,
        tenant: str,
        period: str,
        tokens: int,
        micros: int,
        limit_tokens: int | None,
        limit_micros: int | None,
        *,
        lease_s: float,
    ) -> tuple[bool, Usage]: ...

    async def settle(self, ticket: str, actual_tokens: int, actual_micros: int) -> Usage | None:
        """Charge ``actual`` and release the reservation; None when the ticket is not open (settled
        already, expired, or never granted)."""
        ...

    async def expire(self, now: float | None = None, limit: int = 100) -> list[Reservation]:
        """Release up to ``limit`` reservations whose lease has passed, uncharged."""
        ...

    async def open_tickets(self) -> int: ...

    async def usage(self, tenant: str, period: str) -> Usage: ...


class MemoryLedger:
    """The embedded default: one process's ledger under a lock (no I/O, so its coroutines never wait)."""

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "") -> MemoryLedger:
        return cls()

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], list[int]] = {}
        self._open: dict[str, tuple[Reservation, float]] = {}  # ticket -> (reservation, lease end)

    def _row(self, tenant: str, pkey: str) -> list[int]:
        key = (tenant, pkey)
        if key not in self._rows:
            # Rows of past periods are dropped as a new one starts, unless a reservation still holds them.
            held = {(r.tenant, r.period_key) for r, _ in self._open.values()}
            for old in [k for k in self._rows if k[0] == tenant and k not in held]:
                del self._rows[old]
            self._rows[key] = [0, 0, 0, 0]
        return self._rows[key]

    async def reserve(
        self,
        ticket: str,
        tenant: str,
        period: str,
        tokens: int,
        micros: int,
        limit_tokens: int | None,
        limit_micros: int | None,
        *,
        lease_s: float,
    ) -> tuple[bool, Usage]:
        with self._lock:
            if ticket in self._open:  # a retried reserve: granted already
                held = self._open[ticket][0]
                return True, Usage(*self._row(tenant, held.period_key))
            pkey = period_key(period)
            row = self._row(tenant, pkey)
            if limit_tokens is not None and row[0] + row[1] + tokens > limit_tokens:
                return False, Usage(*row)
            if limit_micros is not None and row[2] + row[3] + micros > limit_micros:
                return False, Usage(*row)
            row[1] += tokens
            row[3] += micros
            self._open[ticket] = (Reservation(ticket, tenant, pkey, tokens, micros), time.time() + lease_s)
            return True, Usage(*row)

    async def settle(self, ticket: str, actual_tokens: int, actual_micros: int) -> Usage | None:
        with self._lock:
            held = self._open.pop(ticket, None)
            if held is None:
                return None
            return Usage(*self._release(held[0], actual_tokens, actual_micros))

    def _release(self, r: Reservation, actual_tokens: int, actual_micros: int) -> list[int]:
        row = self._row(r.tenant, r.period_key)
        row[1] = max(0, row[1] - r.tokens)
        row[3] = max(0, row[3] - r.micros)
        # A request is never charged past its reservation (its worst case).
        row[0] += min(actual_tokens, r.tokens)
        row[2] += min(actual_micros, r.micros)
        return row

    async def expire(self, now: float | None = None, limit: int = 100) -> list[Reservation]:
        now = time.time() if now is None else now
        with self._lock:
            due = [t for t, (_, until) in self._open.items() if until <= now][:limit]
            out = []
            for t in due:
                r, _ = self._open.pop(t)
                self._release(r, 0, 0)
                out.append(r)
            return out

    async def open_tickets(self) -> int:
        with self._lock:
            return len(self._open)

    async def usage(self, tenant: str, period: str) -> Usage:
        with self._lock:
            return Usage(*self._row(tenant, period_key(period)))


# The budget hash of a tenant's period: spent_tokens, reserved_tokens, spent_micros, reserved_micros. A
# reservation: a hash under `<prefix>ticket:<id>` naming its budget hash and amounts, and its lease end in
# the sorted set `<prefix>leases`. The scripts read the budget key out of the ticket, which a single Redis
# (or a replicated primary) allows; a Redis Cluster would need the keys hash-tagged into one slot.

# KEYS: budget hash, ticket hash, leases. ARGV: tokens, token limit (-1 = none), micros, micro limit (-1 =
# none), budget TTL seconds, ticket id, lease end (unix seconds). Returns {granted, spent_t, reserved_t,
# spent_c, reserved_c}.
_RESERVE = """
local function usage(k)
  local h = redis.call('HMGET', k, 'spent_tokens', 'reserved_tokens', 'spent_micros', 'reserved_micros')
  return tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0'), tonumber(h[4] or '0')
end
local held = redis.call('HGET', KEYS[2], 'budget')
if held then
  local st, rt, sc, rc = usage(held)
  return {1, st, rt, sc, rc}
end
local st, rt, sc, rc = usage(KEYS[1])
local t, lt, c, lc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if (lt >= 0 and st + rt + t > lt) or (lc >= 0 and sc + rc + c > lc) then
  return {0, st, rt, sc, rc}
end
rt = redis.call('HINCRBY', KEYS[1], 'reserved_tokens', t)
rc = redis.call('HINCRBY', KEYS[1], 'reserved_micros', c)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('HSET', KEYS[2], 'budget', KEYS[1], 'tokens', t, 'micros', c)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
return {1, st, rt, sc, rc}
"""

# Releases one ticket's reservation and charges it; shared by settle and expire.
_RELEASE = """
local function release(tkey, actual_t, actual_c)
  local r = redis.call('HMGET', tkey, 'budget', 'tokens', 'micros')
  if not r[1] then return nil end
  local b = r[1]
  -- A request is never charged past its reservation (its worst case).
  actual_t = math.min(actual_t, tonumber(r[2]))
  actual_c = math.min(actual_c, tonumber(r[3]))
  -- `0 - x`, not `-x`: Lua formats -0 as "-0", which HINCRBY refuses.
  local rt = redis.call('HINCRBY', b, 'reserved_tokens', 0 - tonumber(r[2]))
  local rc = redis.call('HINCRBY', b, 'reserved_micros', 0 - tonumber(r[3]))
  if rt < 0 then rt = 0; redis.call('HSET', b, 'reserved_tokens', 0) end
  if rc < 0 then rc = 0; redis.call('HSET', b, 'reserved_micros', 0) end
  local st = redis.call('HINCRBY', b, 'spent_tokens', actual_t)
  local sc = redis.call('HINCRBY', b, 'spent_micros', actual_c)
  redis.call('DEL', tkey)
  return {b, st, rt, sc, rc, r[2], r[3]}
end
"""

# KEYS: ticket hash, leases. ARGV: actual tokens, actual micros, ticket id. Returns {0} when the ticket is
# not open, else {1, spent_t, reserved_t, spent_c, reserved_c}.
_SETTLE = (
    _RELEASE
    + """
local out = release(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
redis.call('ZREM', KEYS[2], ARGV[3])
if not out then return {0} end
return {1, out[2], out[3], out[4], out[5]}
"""
)

# KEYS: leases. ARGV: now, limit, ticket key prefix. Returns {id, budget key, tokens, micros, ...} of each
# reservation released.
_EXPIRE = (
    _RELEASE
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local r = release(ARGV[3] .. id, 0, 0)
  redis.call('ZREM', KEYS[1], id)
  if r then
    table.insert(out, id); table.insert(out, r[1]); table.insert(out, r[6]); table.insert(out, r[7])
  end
end
return out
"""
)


class RedisLedger:
    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ragyard:budget:") -> RedisLedger:
        return cls(url, prefix=prefix)

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "ragyard:budget:") -> None:
        self.guard = Guard("budget store (redis)", BackendUnavailableError)
        self.prefix = prefix

        # A blip (a dropped connection, a timeout) is retried with backoff by the client: every script is
        # idempotent per ticket id, so a retry after a lost reply neither reserves nor charges twice.
        def build() -> tuple[Any, dict[str, Any]]:
            client = async_client(url)
            scripts = {"reserve": _RESERVE, "settle": _SETTLE, "expire": _EXPIRE}
            return client, {name: client.register_script(src) for name, src in scripts.items()}

        self._clients = LoopClients(build)

    def _key(self, tenant: str, pkey: str) -> str:
        return f"{self.prefix}{tenant}:{pkey}"

    def _ticket_key(self, ticket: str) -> str:
        return f"{self.prefix}ticket:{ticket}"

    @property
    def _leases(self) -> str:
        return f"{self.prefix}leases"

    @staticmethod
    def _ttl(period: str) -> int:
        # Kept a while past the period's end, so the last period can still be read (and settled into).
        return seconds_to_reset(period) + 7 * 86400

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> list[Any]:
        _, scripts = self._clients.get()
        out: list[Any] = await self.guard.acall(lambda: scripts[script](keys=keys, args=args))
        return out

    async def _call(self, method: str, *args: Any) -> Any:
        client, _ = self._clients.get()
        return await self.guard.acall(lambda: getattr(client, method)(*args))

    async def reserve(
        self,
        ticket: str,
        tenant: str,
        period: str,
        tokens: int,
        micros: int,
        limit_tokens: int | None,
        limit_micros: int | None,
        *,
        lease_s: float,
    ) -> tuple[bool, Usage]:
        lt = -1 if limit_tokens is None else limit_tokens
        lc = -1 if limit_micros is None else limit_micros
        keys = [self._key(tenant, period_key(period)), self._ticket_key(ticket), self._leases]
        args = [tokens, lt, micros, lc, self._ttl(period), ticket, f"{time.time() + lease_s:.3f}"]
        out = [int(x) for x in await self._run("reserve", keys, args)]
        return bool(out[0]), Usage(out[1], out[2], out[3], out[4])

    async def settle(self, ticket: str, actual_tokens: int, actual_micros: int) -> Usage | None:
        out = [
            int(x)
            for x in await self._run(
                "settle", [self._ticket_key(ticket), self._leases], [actual_tokens, actual_micros, ticket]
            )
        ]
        return Usage(out[1], out[2], out[3], out[4]) if out[0] else None

    async def expire(self, now: float | None = None, limit: int = 100) -> list[Reservation]:
        now = time.time() if now is None else now
        flat = await self._run("expire", [self._leases], [f"{now:.3f}", limit, self._ticket_key("")])
        out = []
        for i in range(0, len(flat), 4):
            ticket, budget = (v.decode() if isinstance(v, bytes) else str(v) for v in flat[i : i + 2])
            tenant, _, pkey = budget[len(self.prefix) :].rpartition(":")
            out.append(Reservation(ticket, tenant, pkey, int(flat[i + 2]), int(flat[i + 3])))
        return out

    async def open_tickets(self) -> int:
        return int(await self._call("zcard", self._leases))

    async def usage(self, tenant: str, period: str) -> Usage:
        values = await self._call("hmget", self._key(tenant, period_key(period)), list(_FIELDS))
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
