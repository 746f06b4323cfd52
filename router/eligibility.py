"""The SLA controller's candidates and the rules that rule them out, one function each.

A rule reads a candidate and the decision's situation and returns why the candidate is not eligible
(None: it passes). The rules run in three stages, because the controller's answer when every candidate
fails depends on the stage they failed at: a request's own caps (none left: 400, no plan fits), the
tenant's remaining budget (none left: 429 insufficient_quota), then load (none left: best effort or 429
with Retry-After). A new rule is one function added to its stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.budgets import MICRO
from router.estimates import Estimate, Job, LoadModel, PlanKey
from router.plan import CandidateView
from router.sla import RequestSlo, TierPolicy


@dataclass
class Candidate:
    key: PlanKey
    est: Estimate
    quality: float
    expected_tokens: float
    expected_cost: float
    worst_tokens: int
    worst_micros: int
    pred_latency: float = 0.0
    pred_ttft: float = 0.0
    pred_raw: float = 0.0  # the prediction before calibration: what observed latencies are compared with
    why_not: str | None = None

    def label(self) -> str:
        return f"{self.key.policy}/{self.key.model}" + ("+spec" if self.key.speculative else "")

    def describe(self) -> CandidateView:
        view: CandidateView = {
            "plan": self.label(),
            "quality": round(self.quality, 4),
            "latency_p95_s": round(self.est.latency_s, 3),
            "predicted_latency_s": round(self.pred_latency, 3),
            "predicted_ttft_s": round(self.pred_ttft, 3),
            "expected_tokens": round(self.expected_tokens, 1),
            "worst_case_tokens": self.worst_tokens,
            "estimate_from": self.est.source,
            "eligible": self.why_not is None,
        }
        if self.why_not:
            view["why_not"] = self.why_not
        return view


@dataclass
class Situation:
    """What the rules read for one decision."""

    slo: RequestSlo
    load: LoadModel
    now: float
    # The calibration factor per priority (cached for this decision).
    factor_of: Callable[[int], float]
    remaining_tokens: int | None
    remaining_micros: int | None
    # Admitted requests of this priority or higher that are on track: a new one must not make them miss.
    on_track: list[Job]
    # Tiers of a higher priority, and the fastest plan each may run on a model (a probe of its latency).
    higher: list[tuple[str, TierPolicy]]
    fastest_for: Callable[[TierPolicy, str], float]
    headroom: float

    @property
    def latency_s(self) -> float:
        return self.slo.latency_ms / 1000

    @property
    def ttft_s(self) -> float | None:
        return self.slo.ttft_ms / 1000 if self.slo.ttft_ms else None


Rule = Callable[[Candidate, Situation], "str | None"]


def over_token_cap(c: Candidate, s: Situation) -> str | None:
    if s.slo.max_tokens is not None and c.worst_tokens > s.slo.max_tokens:
        return f"worst case {c.worst_tokens} tokens is over the cap of {s.slo.max_tokens}"
    return None


def over_cost_cap(c: Candidate, s: Situation) -> str | None:
    if s.slo.max_cost is not None and c.worst_micros > s.slo.max_cost * MICRO:
        return f"worst case cost {c.worst_micros / MICRO:.6f} is over the cap of {s.slo.max_cost}"
    return None


def over_budget(c: Candidate, s: Situation) -> str | None:
    if (s.remaining_tokens is not None and c.worst_tokens > s.remaining_tokens) or (
        s.remaining_micros is not None and c.worst_micros > s.remaining_micros
    ):
        return f"worst case {c.worst_tokens} tokens is over the tenant's remaining budget"
    return None


def over_latency(c: Candidate, s: Situation) -> str | None:
    if c.pred_latency > s.latency_s:
        return f"predicted latency {c.pred_latency:.2f} s is over {s.latency_s:g} s"
    return None


def over_ttft(c: Candidate, s: Situation) -> str | None:
    if s.ttft_s is not None and c.pred_ttft > s.ttft_s:
        return f"predicted TTFT {c.pred_ttft:.2f} s is over {s.ttft_s:g} s"
    return None


def delays_admitted(c: Candidate, s: Situation) -> str | None:
    for j in s.on_track:
        if j.model != c.key.model:
            continue
        late = s.now + s.factor_of(j.priority) * s.load.finish_in(
            j, extra=c.est.median_s, extra_priority=s.slo.priority
        )
        if late > j.deadline:
            return "would make an admitted request of equal or higher priority miss its target"
    return None


def hurts_higher_tier(c: Candidate, s: Situation) -> str | None:
    model = c.key.model
    for name, tier in s.higher:
        probe = s.fastest_for(tier, model)
        wait = s.load.wait(model, probe, priority=tier.priority, extra=c.est.median_s, extra_priority=s.slo.priority)
        after = s.factor_of(tier.priority) * (probe + wait)
        if after > s.headroom * tier.latency_ms / 1000:
            return f"higher tier {name!r} would be at {after:.2f} s, over {s.headroom:g} x its {tier.latency_ms} ms"
    return None


CAP_RULES: tuple[Rule, ...] = (over_token_cap, over_cost_cap)
BUDGET_RULES: tuple[Rule, ...] = (over_budget,)
LOAD_RULES: tuple[Rule, ...] = (over_latency, over_ttft, delays_admitted, hurts_higher_tier)


def first_failure(rules: Sequence[Rule], c: Candidate, s: Situation) -> str | None:
    """Why the first failing rule rules the candidate out (None: every rule passes)."""
    for rule in rules:
        if (why := rule(c, s)) is not None:
            return why
    return None


def fits_unloaded(c: Candidate, s: Situation) -> bool:
    """Whether the plan alone, with nothing queued, would meet the latency and TTFT targets."""
    return c.est.latency_s <= s.latency_s and (s.ttft_s is None or c.est.ttft_s <= s.ttft_s)
