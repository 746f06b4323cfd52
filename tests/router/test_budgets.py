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
        ok, _ = ledger.reserve(tenant, "day", sizes[i], 0, limit, None)
        if ok:
            actual = sizes[i] - (i % 3) * 10  # actual use is at most the reservation
            ledger.settle(tenant, "day", sizes[i], 0, actual, 0)
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

        def reserve(self, *a: Any) -> Any:
            self.i += 1
            return ledgers[self.i % 4].reserve(*a)

        def settle(self, *a: Any) -> Any:
            return ledgers[self.i % 4].settle(*a)

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
        ledger.reserve("t", "day", 1, 0, 10, None)


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
        except BudgetExhaustedError:
            return
        prompt = tokens * 3 // 4
        ctl.finish(
            d.sla["ticket"],
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
