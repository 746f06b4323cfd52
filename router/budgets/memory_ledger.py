"""The in-memory budget ledger: one process's reservations under a lock, for the embedded default."""

from __future__ import annotations

import threading
import time

from router import budgets
from router.budgets import Reservation, Usage


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
            pkey = budgets.period_key(period)
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
            return Usage(*self._row(tenant, budgets.period_key(period)))


# The budget hash of a tenant's period: spent_tokens, reserved_tokens, spent_micros, reserved_micros. A
# reservation: a hash under `<prefix>ticket:<id>` naming its budget hash and amounts, and its lease end in
# the sorted set `<prefix>leases`. The scripts read the budget key out of the ticket, which a single Redis
# (or a replicated primary) allows; a Redis Cluster would need the keys hash-tagged into one slot.

# KEYS: budget hash, ticket hash, leases. ARGV: tokens, token limit (-1 = none), micros, micro limit (-1 =
# none), budget TTL seconds, ticket id, lease end (unix seconds). Returns {granted, spent_t, reserved_t,
# spent_c, reserved_c}.
