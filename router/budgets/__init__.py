"""Tenant budgets: reserve a request's worst case before it runs, settle its actual use after.

A reservation is granted only if spent + reserved + this request's worst case stays within the
period's limit, so concurrent requests, on any number of replicas, can never spend past a budget.
In Redis the check and the increment are one Lua script (atomic on the server); the in-memory
ledger does the same under a lock, for the embedded default. Each ledger is a module of its own
(`memory_ledger.py`, `redis_ledger.py`), loaded by the scheme of the store's URL.

Tokens are integers; money is kept in integer micro-units (1e-6) so both add up exactly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

from core.loading import load_object

MICRO = 1_000_000
FIELDS = ("spent_tokens", "reserved_tokens", "spent_micros", "reserved_micros")


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


# Budget stores by URL scheme, loaded on first use; a new one is a class with ``from_url(url, *, prefix)``.
LEDGERS: dict[str, str] = {
    "memory": "router.budgets.memory_ledger:MemoryLedger",
    "redis": "router.budgets.redis_ledger:RedisLedger",
    "rediss": "router.budgets.redis_ledger:RedisLedger",
    "unix": "router.budgets.redis_ledger:RedisLedger",
}


def open_ledger(url: str | None, *, prefix: str = "ragyard:budget:") -> BudgetLedger:
    scheme = urlparse(url or "memory://").scheme
    target = LEDGERS.get(scheme)
    if target is None:
        raise ValueError(f"no budget store for {url!r}; schemes: {', '.join(s + '://' for s in sorted(LEDGERS))}")
    ledger: BudgetLedger = load_object(target).from_url(url or "memory://", prefix=prefix)
    return ledger
