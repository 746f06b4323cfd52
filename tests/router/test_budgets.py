"""Tenant budgets: atomic reservations in Redis (a real redis-server) and in memory."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from router.budgets import open_ledger, period_key, seconds_to_reset
from router.budgets.memory_ledger import MemoryLedger
from router.budgets.redis_ledger import RedisLedger
from router.controller import SlaController
from router.errors import BudgetExhaustedError
from router.estimates import PlanKey
from router.plan import Outcome
from router.sla import PolicyStore, parse_policy
from services.config import load_config

MODEL = "smollm2-135m-instruct"


def _sizes(n: int) -> list[int]:
    rng = random.Random(7)
    return [rng.randint(50, 400) for _ in range(n)]


def _threaded_hammer(ledger: Any, tenant: str, limit: int, n: int) -> list[int]:
    """n reserve-then-settle rounds from 32 threads, each with its own event loop (the memory ledger's lock
    is what keeps them apart); returns the tokens each granted round spent."""
    sizes = _sizes(n)
    spent: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def one(i: int) -> None:
        if i < 32:
            start.wait()
        ticket = f"t{i}"
        ok, _ = asyncio.run(ledger.reserve(ticket, tenant, "day", sizes[i], 0, limit, None, lease_s=600))
        if ok:
            actual = sizes[i] - (i % 3) * 10  # actual use is at most the reservation
            asyncio.run(ledger.settle(ticket, actual, 0))
            with lock:
                spent.append(actual)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(n)))
    return spent


async def _hammer(reserve_on: Any, settle_on: Any, tenant: str, limit: int, n: int) -> list[int]:
    """n concurrent reserve-then-settle rounds on one event loop, interleaved at every store round trip;
    round i reserves on ``reserve_on(i)`` and settles on ``settle_on(i)``."""
    sizes = _sizes(n)
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> int | None:
        async with gate:
            ticket = f"t{i}"
            ok, _ = await reserve_on(i).reserve(ticket, tenant, "day", sizes[i], 0, limit, None, lease_s=600)
            if not ok:
                return None
            actual = sizes[i] - (i % 3) * 10
            await settle_on(i).settle(ticket, actual, 0)
            return actual

    return [a for a in await asyncio.gather(*(one(i) for i in range(n))) if a is not None]


@pytest.mark.unit
def test_memory_ledger_never_overspends() -> None:
    ledger = MemoryLedger()
    spent = _threaded_hammer(ledger, "t", 20_000, 400)
    usage = asyncio.run(ledger.usage("t", "day"))
    assert usage.spent_tokens == sum(spent) <= 20_000 and usage.reserved_tokens == 0
    assert len(spent) < 400  # the limit was reached


@pytest.mark.unit
def test_periods() -> None:
    import datetime as dt

    t = dt.datetime(2026, 12, 31, 23, 59, 30, tzinfo=dt.UTC)
    assert period_key("day", t) == "2026-12-31" and period_key("month", t) == "2026-12"
    assert seconds_to_reset("day", t) == 31 and seconds_to_reset("month", t) == 31
    assert isinstance(open_ledger(None), MemoryLedger)
    with pytest.raises(ValueError, match="no budget store"):
        open_ledger("ftp://x")


@pytest.mark.redis
def test_redis_ledger_is_atomic(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    # Several replicas: each its own client and script registration; each round is settled by another
    # replica than the one that reserved it.
    ledgers = [RedisLedger(redis_url, prefix=prefix) for _ in range(4)]

    async def run() -> tuple[list[int], Any, int]:
        spent = await _hammer(lambda i: ledgers[i % 4], lambda i: ledgers[(i + 1) % 4], "t", 25_000, 600)
        client, _ = ledgers[0]._clients.get()
        return spent, await ledgers[0].usage("t", "day"), await client.ttl(f"{prefix}t:{period_key('day')}")

    spent, usage, ttl = asyncio.run(run())
    assert usage.spent_tokens == sum(spent) <= 25_000 and usage.reserved_tokens == 0
    assert len(spent) < 600
    assert ttl > 86400  # kept past the period


@pytest.mark.redis
def test_unreachable_redis_fails_closed_and_fast() -> None:
    """Refused connections fail closed (BackendUnavailableError); after a few in a row the breaker opens and
    the next calls fail at once, without another connection attempt."""

    from cache.errors import BackendUnavailableError

    ledger = RedisLedger("redis://127.0.0.1:1/0")

    async def run() -> list[str]:
        errors = []
        for _ in range(5):
            with pytest.raises(BackendUnavailableError) as caught:
                await ledger.reserve("x", "t", "day", 1, 0, 10, None, lease_s=60)
            errors.append(str(caught.value))
        return errors

    errors = asyncio.run(run())
    assert "not called for" in errors[-1] and "not called for" not in errors[0]
    with pytest.raises(BackendUnavailableError, match="not called for"):
        asyncio.run(ledger.usage("t", "day"))


@pytest.mark.redis
def test_thousand_concurrent_requests_never_overspend(redis_url: str) -> None:
    """1,000 concurrent requests from 5 tenants over 4 controller replicas sharing one Redis: every
    tenant's spend stays within its budget, to the token, and nothing stays reserved."""
    budgets = {f"tenant{i}": 9_000 + 4_000 * i for i in range(5)}
    policy = parse_policy(
        {
            "default_tier": "batch",
            "tiers": {"batch": {"priority": 1, "latency_ms": 1_000_000_000}},
            "tenants": {
                name: {"api_keys": [f"key-{name}"], "tier": "batch", "budget": {"tokens": tokens}}
                for name, tokens in budgets.items()
            },
        }
    )
    prefix = f"test:{uuid.uuid4().hex}:"
    config = load_config({"sla": {"enabled": True}})
    replicas = []
    for _ in range(4):
        store = PolicyStore(None)
        store._policy = policy
        ctl = SlaController(config, store, RedisLedger(redis_url, prefix=prefix), quality={"none": {"A": 1.0}})
        for _ in range(3):
            ctl.estimator.observe(PlanKey("none", MODEL, False, False), None, 0.01, 0.005, 50, 10)
        replicas.append(ctl)
    rng = random.Random(11)
    plan = [(f"tenant{rng.randrange(5)}", rng.randint(40, 2048)) for _ in range(1000)]
    gate = asyncio.Semaphore(50)

    async def one(i: int) -> tuple[str, int] | None:
        async with gate:
            tenant, tokens = plan[i]
            ctl = replicas[i % 4]
            try:
                ticket = await _admit(ctl, tenant)
            except BudgetExhaustedError:
                return None
            prompt = tokens * 3 // 4
            await ctl.finish(
                ticket,
                Outcome(ok=True, latency_s=0.01, prompt_tokens=prompt, completion_tokens=tokens - prompt),
            )
            return tenant, tokens

    async def run() -> tuple[list[tuple[str, int] | None], dict[str, Any], dict[str, Any]]:
        outcomes = await asyncio.gather(*(one(i) for i in range(1000)))
        usages = {name: await replicas[0].ledger.usage(name, "day") for name in budgets}
        return outcomes, usages, await replicas[1].snapshot()

    outcomes, usages, snap = asyncio.run(run())
    served = [o for o in outcomes if o is not None]
    assert 0 < len(served) < 1000
    for name, limit in budgets.items():
        usage = usages[name]
        expected = sum(t for n, t in served if n == name)
        assert usage.spent_tokens == expected, name
        assert usage.spent_tokens <= limit, f"{name} overspent by {usage.spent_tokens - limit}"
        assert usage.reserved_tokens == 0
        # The budget was used up: no room left for another worst case.
        assert limit - usage.spent_tokens < 2048
    assert all(t["usage"]["spent_tokens"] <= t["budget"]["tokens"] for t in snap["tenants"].values())
    assert all(not r._tickets and not r.load.jobs for r in replicas)  # every admission taken back or finished


def _ledgers(redis_url: str) -> list[Any]:
    return [MemoryLedger(), RedisLedger(redis_url, prefix=f"test:{uuid.uuid4().hex}:")]


@pytest.mark.redis
def test_tickets_are_idempotent_capped_and_expire_by_lease(redis_url: str) -> None:
    """Per ticket id: a retried reserve holds once, a second settle charges nothing, a charge never
    exceeds the reservation, and a lease that passes releases the reservation uncharged, after which a
    late settle charges nothing either. Memory and Redis alike."""
    import time

    async def check(ledger: Any) -> None:
        assert (await ledger.reserve("a", "t", "day", 100, 0, 1000, None, lease_s=600))[0]
        # a retry after a lost reply
        assert (await ledger.reserve("a", "t", "day", 100, 0, 1000, None, lease_s=600))[0]
        assert (await ledger.usage("t", "day")).reserved_tokens == 100 and await ledger.open_tickets() == 1
        assert await ledger.settle("a", 150, 0) is not None  # capped at its 100
        assert await ledger.settle("a", 150, 0) is None
        usage = await ledger.usage("t", "day")
        assert (usage.spent_tokens, usage.reserved_tokens) == (100, 0)
        assert (await ledger.reserve("b", "t", "day", 200, 0, 1000, None, lease_s=30))[0]
        assert await ledger.expire(now=time.time() + 1) == []  # not yet
        [released] = await ledger.expire(now=time.time() + 31)
        assert (released.ticket, released.tenant, released.tokens) == ("b", "t", 200)
        assert released.period_key == period_key("day")
        assert await ledger.settle("b", 50, 0) is None and await ledger.open_tickets() == 0
        usage = await ledger.usage("t", "day")
        assert (usage.spent_tokens, usage.reserved_tokens) == (100, 0), ledger.name

    for ledger in _ledgers(redis_url):
        asyncio.run(check(ledger))


@pytest.mark.redis
def test_a_request_crossing_midnight_settles_against_the_day_it_started(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import router.budgets as budgets

    async def check(ledger: Any) -> None:
        monkeypatch.setattr(budgets, "period_key", lambda period, now=None: "2026-12-01")
        assert (await ledger.reserve("late", "t", "day", 100, 0, 1000, None, lease_s=600))[0]
        monkeypatch.setattr(budgets, "period_key", lambda period, now=None: "2026-12-02")  # past midnight
        assert (await ledger.usage("t", "day")).reserved_tokens == 0  # the new day holds nothing
        await ledger.settle("late", 40, 0)
        assert (await ledger.usage("t", "day")).spent_tokens == 0
        monkeypatch.setattr(budgets, "period_key", lambda period, now=None: "2026-12-01")
        usage = await ledger.usage("t", "day")
        assert (usage.spent_tokens, usage.reserved_tokens) == (40, 0), ledger.name
        monkeypatch.undo()

    for ledger in _ledgers(redis_url):
        asyncio.run(check(ledger))


def _budget_controller(ledger: Any) -> SlaController:
    policy = parse_policy(
        {
            "default_tier": "batch",
            "tiers": {"batch": {"priority": 1, "latency_ms": 1_000_000_000}},
            "tenants": {"t": {"api_keys": ["k"], "tier": "batch", "budget": {"tokens": 100_000}}},
            "controller": {"ticket_lease_s": 120},
        }
    )
    store = PolicyStore(None)
    store._policy = policy
    ctl = SlaController(load_config({"sla": {"enabled": True}}), store, ledger, quality={"none": {"A": 1.0}})
    for _ in range(3):
        ctl.estimator.observe(PlanKey("none", MODEL, False, False), None, 0.01, 0.005, 50, 10)
    return ctl


async def _admit(ctl: SlaController, tenant: str = "t") -> str:
    d = await ctl.decide(
        tenant=tenant,
        headers={},
        complexity=None,
        pinned_policy=None,
        pinned_model=None,
        top_k=4,
        max_tokens=32,
        cacheable=True,
        use_response_cache=False,
    )
    ticket: str = d.sla.ticket
    return ticket


@pytest.mark.redis
def test_a_new_router_settles_and_expires_the_tickets_of_one_that_restarted(redis_url: str) -> None:
    """The reservations live in Redis: a router that restarts (a new controller over the same store) still
    settles a report of a ticket it did not make, and releases by lease those no report will come for."""
    import time

    prefix = f"test:{uuid.uuid4().hex}:"

    async def run() -> None:
        old = _budget_controller(RedisLedger(redis_url, prefix=prefix))
        reported, lost = await _admit(old), await _admit(old)
        del old  # the router restarts
        new = _budget_controller(RedisLedger(redis_url, prefix=prefix))
        assert (await new.ledger.usage("t", "day")).reserved_tokens > 0 and await new.ledger.open_tickets() == 2
        settled = await new.finish(
            reported, Outcome(ok=True, latency_s=0.1, prompt_tokens=30, completion_tokens=5, model=MODEL)
        )
        assert settled is not None and settled.budget is not None and settled.budget["spent_tokens"] == 35
        await new.tidy(now=time.time() + 121)
        usage = await new.ledger.usage("t", "day")
        assert (usage.spent_tokens, usage.reserved_tokens) == (35, 0) and await new.ledger.open_tickets() == 0
        assert await new.finish(lost, Outcome(ok=True, latency_s=0.1, prompt_tokens=30, completion_tokens=5)) is None

    asyncio.run(run())


@pytest.mark.unit
def test_a_settle_the_store_refuses_is_retried_on_a_later_call() -> None:
    """The store is down when the report comes: the charge waits in the router and goes in on the next
    call once the store answers again; nothing is lost and nothing is charged twice."""
    from cache.errors import BackendUnavailableError

    class Flaky(MemoryLedger):
        down = False

        async def settle(self, ticket: str, actual_tokens: int, actual_micros: int) -> Any:
            if self.down:
                raise BackendUnavailableError("budget store (redis): connection refused")
            return await super().settle(ticket, actual_tokens, actual_micros)

    async def run() -> None:
        ledger = Flaky()
        ctl = _budget_controller(ledger)
        ticket = await _admit(ctl)
        ledger.down = True
        settled = await ctl.finish(ticket, Outcome(ok=True, latency_s=0.1, prompt_tokens=30, completion_tokens=5))
        assert settled is not None and settled.budget is None and ctl.settlements.pending
        await ctl.tidy()  # still down: kept
        assert ctl.settlements.pending and (await ledger.usage("t", "day")).spent_tokens == 0
        ledger.down = False
        await ctl.tidy()
        assert not ctl.settlements.pending and (await ledger.usage("t", "day")).spent_tokens == 35
        await ctl.tidy()
        usage = await ledger.usage("t", "day")
        assert usage.spent_tokens == 35 and usage.reserved_tokens == 0

    asyncio.run(run())
