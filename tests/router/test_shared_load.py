"""Two SLA controllers (two router replicas) over one Redis: one load view, one calibration, outcomes handed to
the router that admitted the request."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from router.budgets.memory_ledger import MemoryLedger
from router.controller import SlaController
from router.errors import OverloadedError
from router.estimates import PlanKey
from router.plan import Complexity, Outcome
from router.shared_load import SharedLoad
from router.sla import PolicyStore, parse_policy
from services.config import load_config
from tests.router.sla_tables import MODEL, POLICY, PRIORS, QUALITY

pytestmark = pytest.mark.integration


def _pair(redis_url: str) -> tuple[SlaController, SlaController]:
    prefix = f"test:load:{uuid.uuid4().hex}:"
    config = load_config({"sla": {"enabled": True}, "models": [{"id": MODEL}]})
    out = []
    for _ in range(2):
        store = PolicyStore(None)
        store._policy = parse_policy(POLICY)
        ctl = SlaController(
            config, store, MemoryLedger(), quality=QUALITY, priors=PRIORS, shared=SharedLoad(redis_url, prefix=prefix)
        )
        for _ in range(5):  # every plan of class B takes 3 s on the model
            ctl.estimator.observe(PlanKey("none", MODEL, False, False), "B", 3.0, 1.0, 500, 20)
            ctl.estimator.observe(PlanKey("single", MODEL, False, False), "B", 3.0, 1.0, 500, 20)
        out.append(ctl)
    return out[0], out[1]


async def _decide(ctl: SlaController) -> Any:
    return await ctl.decide(
        tenant="acme",
        headers={},
        complexity=Complexity(cls="B", probabilities={"A": 0.0, "B": 1.0, "C": 0.0}, policy="single"),
        pinned_policy=None,
        pinned_model=None,
        top_k=4,
        max_tokens=32,
        cacheable=True,
        use_response_cache=True,
    )


def test_routers_see_each_others_jobs_and_shed_as_one(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = _pair(redis_url)
        # interactive: 6 s target; each job is 3 s of the one worker. Alone, each router would admit two at once
        # with no queue in view; together the second admission anywhere sees the first.
        first = await _decide(a)
        await b.sync(force=True)
        assert len(b.load.jobs) == 1 and first.sla.ticket in b._foreign
        second = await _decide(b)
        assert second.sla.queue_wait_s > 0 or second.sla.degraded
        # Enough work in flight across the two, and either router sheds the tier.
        shed = 0
        for n in range(6):
            try:
                await _decide(a if n % 2 else b)
            except OverloadedError:
                shed += 1
            await a.sync(force=True)
            await b.sync(force=True)
        assert shed >= 3
        assert len(a.load.jobs) == len(b.load.jobs)

    asyncio.run(scenario())


def test_an_outcome_reported_to_the_other_router_reaches_the_one_that_admitted(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = _pair(redis_url)
        d = await _decide(a)
        ticket = d.sla.ticket
        await b.sync(force=True)
        assert ticket in b._foreign
        # The gateway's report lands on b: b settles it and hands it over.
        await b.finish(ticket, Outcome(ok=True, latency_s=2.0, ttft_s=0.5, prompt_tokens=10, completion_tokens=5))
        await b.sync(force=True)
        assert ticket not in b._foreign and not b.load.jobs
        assert ticket in a._tickets
        await a.sync(force=True)
        assert ticket not in a._tickets and not a.load.jobs
        # a learned from it, and its ratio is in the shared calibration that b reads too.
        await b.sync(force=True)
        assert sum(len(q) for q in a.calibrator.ratios.values()) == 1
        assert sum(len(q) for q in b.calibrator.ratios.values()) == 1

    asyncio.run(scenario())


def test_without_redis_each_router_keeps_its_own_view() -> None:
    async def scenario() -> None:
        a, _ = _pair("redis://127.0.0.1:1/0")  # nothing listens there
        d = await _decide(a)
        assert d.sla.ticket in a._tickets and len(a.load.jobs) == 1
        await a.finish(d.sla.ticket, Outcome(ok=True, latency_s=2.0, prompt_tokens=1, completion_tokens=1))
        assert not a.load.jobs

    asyncio.run(scenario())
