"""The Redis budget ledger: each reservation's check and increment one Lua script, atomic on the server, so
any number of routers share one budget without spending past it."""

from __future__ import annotations

import time
from typing import Any

from cache.errors import BackendUnavailableError
from core.redis_client import Guard, LoopClients, async_client
from router import budgets
from router.budgets import FIELDS, Reservation, Usage

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
        return budgets.seconds_to_reset(period) + 7 * 86400

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
        keys = [self._key(tenant, budgets.period_key(period)), self._ticket_key(ticket), self._leases]
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
        values = await self._call("hmget", self._key(tenant, budgets.period_key(period)), list(FIELDS))
        return Usage(*(int(v or 0) for v in values))
