"""The SLA controller's eligibility rules, each on its own: a candidate that passes, one that fails,
and the reason it gives. The controller's tests (test_sla.py) check them together."""

from __future__ import annotations

import functools

import pytest

from router.eligibility import (
    BUDGET_RULES,
    CAP_RULES,
    LOAD_RULES,
    Candidate,
    Situation,
    delays_admitted,
    first_failure,
    fits_unloaded,
    hurts_higher_tier,
    over_budget,
    over_cost_cap,
    over_latency,
    over_token_cap,
    over_ttft,
)
from router.estimates import Estimate, LoadModel, PlanKey
from router.sla import QualityFloor, RequestSlo, TierPolicy

pytestmark = pytest.mark.unit

MODEL = "m"


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def slo(**over: object) -> RequestSlo:
    base: dict[str, object] = {
        "tenant": "t",
        "tier": "batch",
        "priority": 1,
        "latency_ms": 4000,
        "ttft_ms": None,
        "max_tokens": None,
        "max_cost": None,
    }
    base.update(over)
    return RequestSlo(floor=QualityFloor(), **base)  # type: ignore[arg-type]


def cand(latency: float = 1.0, median: float = 0.8, ttft: float = 0.2, worst: int = 1000, micros: int = 0) -> Candidate:
    est = Estimate(latency, median, ttft, 100.0, 10.0, 50, "plan")
    c = Candidate(PlanKey("single", MODEL, False, False), est, 0.5, 110.0, 0.0, worst, micros)
    c.pred_latency, c.pred_ttft = latency, ttft
    return c


def situation(request: RequestSlo | None = None, load: LoadModel | None = None, **over: object) -> Situation:
    load = load or LoadModel({MODEL: 1}, clock=Clock())
    base: dict[str, object] = {
        "slo": request or slo(),
        "load": load,
        "now": load.now(),
        "factor_of": functools.cache(lambda priority: 1.0),
        "remaining_tokens": None,
        "remaining_micros": None,
        "on_track": [],
        "higher": [],
        "fastest_for": lambda tier, model: 0.5,
        "headroom": 1.0,
    }
    base.update(over)
    return Situation(**base)  # type: ignore[arg-type]


def test_the_request_caps() -> None:
    assert over_token_cap(cand(worst=1000), situation(slo(max_tokens=1000))) is None
    assert over_token_cap(cand(worst=1001), situation(slo(max_tokens=1000))) == (
        "worst case 1001 tokens is over the cap of 1000"
    )
    assert over_cost_cap(cand(micros=2_000_000), situation(slo(max_cost=1.5))) == (
        "worst case cost 2.000000 is over the cap of 1.5"
    )
    assert over_cost_cap(cand(micros=1_000_000), situation(slo(max_cost=1.5))) is None
    assert first_failure(CAP_RULES, cand(), situation()) is None


def test_the_tenants_remaining_budget() -> None:
    assert over_budget(cand(worst=900), situation(remaining_tokens=1000)) is None
    assert "remaining budget" in (over_budget(cand(worst=1200), situation(remaining_tokens=1000)) or "")
    assert over_budget(cand(micros=5), situation(remaining_micros=4)) is not None
    assert first_failure(BUDGET_RULES, cand(), situation()) is None  # no budget configured


def test_latency_and_ttft_targets() -> None:
    assert over_latency(cand(latency=4.0), situation()) is None
    assert over_latency(cand(latency=4.5), situation()) == "predicted latency 4.50 s is over 4 s"
    assert over_ttft(cand(ttft=0.9), situation()) is None  # no TTFT target
    assert over_ttft(cand(ttft=0.9), situation(slo(ttft_ms=500))) == "predicted TTFT 0.90 s is over 0.5 s"
    assert fits_unloaded(cand(latency=3.0, ttft=0.4), situation(slo(ttft_ms=500)))
    assert not fits_unloaded(cand(latency=3.0, ttft=0.6), situation(slo(ttft_ms=500)))


def test_an_admitted_request_on_track_is_not_made_late() -> None:
    load = LoadModel({MODEL: 1}, clock=Clock())
    job = load.admit(MODEL, priority=1, service_s=1.0, target_s=1.5)
    s = situation(load=load, on_track=[job])
    # Sharing the one server with a 0.8 s job finishes the admitted 1 s job at 1.8 s, past its 1.5 s.
    assert delays_admitted(cand(median=0.8), s) == (
        "would make an admitted request of equal or higher priority miss its target"
    )
    assert delays_admitted(cand(median=0.2), s) is None  # 1.2 s: still on time
    other = situation(load=load, on_track=[load.admit("other-model", priority=1, service_s=1.0, target_s=1.1)])
    assert delays_admitted(cand(median=0.8), other) is None  # another model's job is not slowed


def test_a_higher_tier_keeps_its_headroom() -> None:
    gold = TierPolicy(priority=5, latency_ms=1000)
    load = LoadModel({MODEL: 1}, clock=Clock())
    load.admit(MODEL, priority=1, service_s=2.0)
    s = situation(load=load, higher=[("gold", gold)], fastest_for=lambda tier, model: 0.5)
    # Non-strict sharing: gold's 0.5 s probe shares the server with 2 s and 0.8 s of lower work.
    why = hurts_higher_tier(cand(median=0.8), s)
    assert why is not None and why.startswith("higher tier 'gold' would be at") and "1 x its 1000 ms" in why
    assert hurts_higher_tier(cand(median=0.8), situation(higher=[("gold", gold)])) is None  # idle: 0.5 s
    assert first_failure(LOAD_RULES, cand(), situation()) is None


def test_the_first_failing_rule_gives_the_reason() -> None:
    c = cand(latency=9.0, ttft=9.0)
    assert first_failure(LOAD_RULES, c, situation(slo(ttft_ms=500))) == "predicted latency 9.00 s is over 4 s"
