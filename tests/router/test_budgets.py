"""Tenant budgets: atomic reservations in Redis (a real redis-server) and in memory."""

from __future__ import annotations

import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from router.budgets import MemoryLedger, RedisLedger, open_ledger, period_key, seconds_to_reset
from router.controller import SlaController
from router.errors import BudgetExhaustedError
from router.estimates import PlanKey
from router.plan import Outcome
from router.sla import PolicyStore, parse_policy
from services.config import load_config

MODEL = "smollm2-135m-instruct"


def _hammer(ledger: Any, tenant: str, limit: int, n: int) -> list[int]:
    """n concurrent reserve-then-settle rounds; returns the tokens each granted round spent."""
    rng = random.Random(7)
    sizes = [rng.randint(50, 400) for _ in range(n)]
    spent: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def one(i: int) -> None:
        if i < 32:
            start.wait()
        ticket = f"t{i}"
        ok, _ = ledger.reserve(ticket, tenant, "day", sizes[i], 0, limit, None, lease_s=600)
        if ok:
            actual = sizes[i] - (i % 3) * 10  # actual use is at most the reservation
            ledger.settle(ticket, actual, 0)
            with lock:
                spent.append(actual)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(n)))
    return spent


@pytest.mark.unit
def test_memory_ledger_never_overspends() -> None:
    ledger = MemoryLedger()
    spent = _hammer(ledger, "t", 20_000, 400)
    usage = ledger.usage("t", "day")
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
    # Several replicas: each its own client and script registration.
    ledgers = [RedisLedger(redis_url, prefix=prefix) for _ in range(4)]

    class Spread:
        def __init__(self) -> None:
            self.i = 0

        def reserve(self, *a: Any, **kw: Any) -> Any:
            self.i += 1
            return ledgers[self.i % 4].reserve(*a, **kw)

        def settle(self, *a: Any) -> Any:
            return ledgers[(self.i + 1) % 4].settle(*a)  # settled by another replica than reserved it

    spent = _hammer(Spread(), "t", 25_000, 600)
    usage = ledgers[0].usage("t", "day")
    assert usage.spent_tokens == sum(spent) <= 25_000 and usage.reserved_tokens == 0
    assert len(spent) < 600
    assert ledgers[0].client.ttl(f"{prefix}t:{period_key('day')}") > 86400  # kept past the period


@pytest.mark.redis
def test_unreachable_redis_fails_closed() -> None:
    from cache.errors import BackendUnavailableError

    ledger = RedisLedger("redis://127.0.0.1:1/0")
    with pytest.raises(BackendUnavailableError):
        ledger.reserve("x", "t", "day", 1, 0, 10, None, lease_s=60)


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
    outcomes: list[tuple[str, int] | None] = [None] * 1000
    start = threading.Barrier(50)

    def one(i: int) -> None:
        if i < 50:
            start.wait()
        tenant, tokens = plan[i]
        ctl = replicas[i % 4]
        try:
            ticket = _admit(ctl, tenant)
        except BudgetExhaustedError:
            return
        prompt = tokens * 3 // 4
        ctl.finish(
            ticket,
            Outcome(ok=True, latency_s=0.01, prompt_tokens=prompt, completion_tokens=tokens - prompt),
        )
        outcomes[i] = (tenant, tokens)

    with ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(one, range(1000)))
    served = [o for o in outcomes if o is not None]
    assert 0 < len(served) < 1000
    for name, limit in budgets.items():
        usage = replicas[0].ledger.usage(name, "day")
        expected = sum(t for n, t in served if n == name)
        assert usage.spent_tokens == expected, name
        assert usage.spent_tokens <= limit, f"{name} overspent by {usage.spent_tokens - limit}"
        assert usage.reserved_tokens == 0
        # The budget was used up: no room left for another worst case.
        assert limit - usage.spent_tokens < 2048
    snap = replicas[1].snapshot()
    assert all(t["usage"]["spent_tokens"] <= t["budget"]["tokens"] for t in snap["tenants"].values())


def _ledgers(redis_url: str) -> list[Any]:
    return [MemoryLedger(), RedisLedger(redis_url, prefix=f"test:{uuid.uuid4().hex}:")]


@pytest.mark.redis
def test_tickets_are_idempotent_capped_and_expire_by_lease(redis_url: str) -> None:
    """Per ticket id: a retried reserve holds once, a second settle charges nothing, a charge never
    exceeds the reservation, and a lease that passes releases the reservation uncharged, after which a
    late settle charges nothing either. Memory and Redis alike."""
    import time

    for ledger in _ledgers(redis_url):
        assert ledger.reserve("a", "t", "day", 100, 0, 1000, None, lease_s=600)[0]
        assert ledger.reserve("a", "t", "day", 100, 0, 1000, None, lease_s=600)[0]  # a retry after a lost reply
        assert ledger.usage("t", "day").reserved_tokens == 100 and ledger.open_tickets() == 1
        assert ledger.settle("a", 150, 0) is not None  # capped at its 100
        assert ledger.settle("a", 150, 0) is None
        usage = ledger.usage("t", "day")
        assert (usage.spent_tokens, usage.reserved_tokens) == (100, 0)
        assert ledger.reserve("b", "t", "day", 200, 0, 1000, None, lease_s=30)[0]
        assert ledger.expire(now=time.time() + 1) == []  # not yet
        [released] = ledger.expire(now=time.time() + 31)
        assert (released.ticket, released.tenant, released.tokens) == ("b", "t", 200)
        assert released.period_key == period_key("day")
        assert ledger.settle("b", 50, 0) is None and ledger.open_tickets() == 0
        usage = ledger.usage("t", "day")
        assert (usage.spent_tokens, usage.reserved_tokens) == (100, 0), ledger.name


@pytest.mark.redis
def test_a_request_crossing_midnight_settles_against_the_day_it_started(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import router.budgets as budgets

    for ledger in _ledgers(redis_url):
        monkeypatch.setattr(budgets, "period_key", lambda period, now=None: "2026-12-01")
        assert ledger.reserve("late", "t", "day", 100, 0, 1000, None, lease_s=600)[0]
        monkeypatch.setattr(budgets, "period_key", lambda period, now=None: "2026-12-02")  # past midnight
        assert ledger.usage("t", "day").reserved_tokens == 0  # the new day holds nothing
        ledger.settle("late", 40, 0)
        assert ledger.usage("t", "day").spent_tokens == 0
        monkeypatch.setattr(budgets, "period_key", lambda period, now=None: "2026-12-01")
        usage = ledger.usage("t", "day")
        assert (usage.spent_tokens, usage.reserved_tokens) == (40, 0), ledger.name
        monkeypatch.undo()


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


def _admit(ctl: SlaController, tenant: str = "t") -> str:
    d = ctl.decide(
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
    ticket: str = d.sla["ticket"]
    return ticket


@pytest.mark.redis
def test_a_new_router_settles_and_expires_the_tickets_of_one_that_restarted(redis_url: str) -> None:
    """The reservations live in Redis: a router that restarts (a new controller over the same store) still
    settles a report of a ticket it did not make, and releases by lease those no report will come for."""
    import time

    prefix = f"test:{uuid.uuid4().hex}:"
    old = _budget_controller(RedisLedger(redis_url, prefix=prefix))
    reported, lost = _admit(old), _admit(old)
    del old  # the router restarts
    new = _budget_controller(RedisLedger(redis_url, prefix=prefix))
    assert new.ledger.usage("t", "day").reserved_tokens > 0 and new.ledger.open_tickets() == 2
    settled = new.finish(reported, Outcome(ok=True, latency_s=0.1, prompt_tokens=30, completion_tokens=5, model=MODEL))
    assert settled is not None and settled.budget is not None and settled.budget["spent_tokens"] == 35
    new._expire(now=time.time() + 121)
    usage = new.ledger.usage("t", "day")
    assert (usage.spent_tokens, usage.reserved_tokens) == (35, 0) and new.ledger.open_tickets() == 0
    assert new.finish(lost, Outcome(ok=True, latency_s=0.1, prompt_tokens=30, completion_tokens=5)) is None


@pytest.mark.unit
def test_a_settle_the_store_refuses_is_retried_on_a_later_call() -> None:
    """The store is down when the report comes: the charge waits in the router and goes in on the next
    call once the store answers again; nothing is lost and nothing is charged twice."""
    from cache.errors import BackendUnavailableError

    class Flaky(MemoryLedger):
        down = False

        def settle(self, ticket: str, actual_tokens: int, actual_micros: int) -> Any:
            if self.down:
                raise BackendUnavailableError("budget store (redis): connection refused")
            return super().settle(ticket, actual_tokens, actual_micros)

    ledger = Flaky()
    ctl = _budget_controller(ledger)
    ticket = _admit(ctl)
    ledger.down = True
    settled = ctl.finish(ticket, Outcome(ok=True, latency_s=0.1, prompt_tokens=30, completion_tokens=5))
    assert settled is not None and settled.budget is None and ctl.settlements.pending
    ctl._expire()  # still down: kept
    assert ctl.settlements.pending and ledger.usage("t", "day").spent_tokens == 0
    ledger.down = False
    ctl._expire()
    assert not ctl.settlements.pending and ledger.usage("t", "day").spent_tokens == 35
    ctl._expire()
    assert ledger.usage("t", "day").spent_tokens == 35 and ledger.usage("t", "day").reserved_tokens == 0
