"""The plan space of the SLA controller and the choice in it: each (policy, model, speculation) candidate
with its expected quality (the router's class probabilities times a quality table), its predicted latency and
TTFT under the load in flight, and its worst-case cost; then the best that every eligibility rule admits.

The controller (`router/controller.py`) owns what a choice commits: admission into the load model, the budget
reservation, the ticket and what an ended request teaches. This module decides and keeps no state of its own
beyond the tables it reads.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.capabilities import CHUNK_CACHE, SPEC_PER_REQUEST
from retrieval.policies.registry import choosable_policies, get_policy, policy_rank
from router.budgets import seconds_to_reset
from router.calibration import LatencyCalibration
from router.config import RouterSettings, escalation_target
from router.eligibility import (
    BUDGET_RULES,
    CAP_RULES,
    LOAD_RULES,
    Candidate,
    Situation,
    first_failure,
    fits_unloaded,
)
from router.errors import BudgetExhaustedError, OverloadedError, PlanUnavailableError
from router.estimates import Estimator, LoadModel, PlanKey
from router.plan import CandidateView
from router.quality import CLASSES, QualityTable, measured_quality
from router.sla import RequestSlo, SlaPolicy, TierPolicy
from router.sla_metrics import SHED

# Expected qualities this close count as equal (the table's F1 differences below it are noise).
QUALITY_TIE = 0.005


@dataclass
class Choice:
    """The chosen candidate and how it was chosen: every candidate described (the trace's `plan.sla`), whether
    load displaced a better plan (``unloaded``: that plan's label), whether nothing fits and this is the fastest."""

    chosen: Candidate
    candidates: list[CandidateView] = field(default_factory=list)
    degraded: bool = False
    unloaded: str | None = None
    best_effort: bool = False
    # The confidence cascade's second step for the chosen plan (`Planner.cascade`); None: no cascade for it.
    cascade: dict[str, Any] | None = None


class Planner:
    """Candidates and the choice among them, over the controller's estimator, load model and calibration
    (shared with it, read here under its lock)."""

    def __init__(
        self,
        config: RouterSettings,
        estimator: Estimator,
        load: LoadModel,
        calibrator: LatencyCalibration,
        *,
        quality: dict[str, dict[str, float]] | None = None,
        model_quality: QualityTable | None = None,
    ) -> None:
        self.config = config
        self.estimator = estimator
        self.load = load
        self.calibrator = calibrator
        self.measured_quality = quality if quality is not None else self.default_quality(config)
        # The router's model x policy x class table, when it has one: a stronger model can win on quality
        # and a cheaper one on latency and cost, as with the controller off.
        self.model_quality = model_quality

    @staticmethod
    def default_quality(config: RouterSettings) -> dict[str, dict[str, float]]:
        if config.router.artifact:
            labels = Path(config.router.artifact).with_name("labels.jsonl")
            if labels.exists():
                return measured_quality(labels)
        return {}

    def quality_table(self, policy: SlaPolicy) -> dict[str, Any]:
        """The table in force: the SLA policy's own (policy x class), else the model x policy x class table,
        else the per-policy table measured from the classifier's labels."""
        if policy.quality is not None:
            return policy.quality
        if self.model_quality is not None:
            return {"by_model": self.model_quality.table, "version": self.model_quality.version}
        return self.measured_quality

    def by_class(self, policy: SlaPolicy, model: str, name: str) -> dict[str, float] | None:
        if policy.quality is not None:
            return policy.quality.get(name)
        if self.model_quality is not None and model in self.model_quality.table:
            return self.model_quality.table[model].get(name)
        return self.measured_quality.get(name)

    def candidates(
        self,
        policy: SlaPolicy,
        slo: RequestSlo,
        probs: dict[str, float],
        cls: str | None,
        pinned_policy: str | None,
        pinned_model: str | None,
    ) -> list[Candidate]:
        policies = (
            [pinned_policy]
            if pinned_policy
            else [
                p
                for p in choosable_policies()
                if any(self.by_class(policy, m.id, p) is not None for m in self.config.models)
            ]
        )
        floor = policy_rank(slo.floor.min_policy)
        policies = [p for p in policies if pinned_policy or policy_rank(p) >= floor]
        out = []
        for m in self.config.models:
            if pinned_model and m.id != pinned_model:
                continue
            if not pinned_model and slo.floor.models is not None and m.id not in slo.floor.models:
                continue
            spec_options = [False]
            if m.speculative is not None:
                # An engine that cannot turn its draft pair off per request always speculates.
                spec_options = [True, False] if SPEC_PER_REQUEST in m.capabilities else [True]
            price = policy.price(m.id)
            dearest = max(price.prompt_per_1m, price.completion_per_1m)
            for p in policies:
                worst = self.max_calls(p) * m.max_model_len
                for spec in spec_options:
                    key = PlanKey(p, m.id, spec, m.chunk_cache.enabled and CHUNK_CACHE in m.capabilities)
                    est = self.estimator.predict(key, cls)
                    by_class = self.by_class(policy, m.id, p) or {}
                    quality = sum(probs.get(c, 0.0) * by_class.get(c, 0.0) for c in CLASSES)
                    out.append(
                        Candidate(
                            key=key,
                            est=est,
                            quality=quality,
                            expected_tokens=est.prompt_tokens + est.completion_tokens,
                            expected_cost=price.cost(int(est.prompt_tokens), int(est.completion_tokens)),
                            worst_tokens=worst,
                            worst_micros=math.ceil(worst * dearest),
                        )
                    )
        return out

    def max_calls(self, policy: str) -> int:
        return get_policy(policy).max_llm_calls(self.config.retrieval)

    def fastest_for(self, tier: TierPolicy, model: str) -> float:
        """The p95 service time of the quickest plan a tier may run on a model (its fully degraded plan)."""
        floor = policy_rank(tier.quality_floor.min_policy)
        best = math.inf
        for p in choosable_policies():
            if policy_rank(p) >= floor:
                m = self.config.model(model)
                spec = m.speculative is not None
                key = PlanKey(p, model, spec, m.chunk_cache.enabled and CHUNK_CACHE in m.capabilities)
                best = min(best, self.estimator.predict(key, None).latency_s)
        return best

    @staticmethod
    def best(candidates: list[Candidate], per_second: float = 0.0) -> Candidate:
        """The best expected quality net of ``per_second`` × the predicted latency (the router's rule: a slower
        plan must buy at least ``per_second`` of expected F1 per extra second); plans within QUALITY_TIE of the
        best tie, and the tie goes to the cheaper, then the faster plan. (Rounding qualities into buckets would
        not: 0.5024 and 0.5026 fall in two.)"""

        def net(c: Candidate) -> float:
            return c.quality - per_second * c.pred_latency

        top = max(net(c) for c in candidates)
        tied = [c for c in candidates if net(c) >= top - QUALITY_TIE - 1e-12]
        return max(tied, key=lambda c: (-c.expected_cost - c.expected_tokens * 1e-9, -c.pred_latency, c.quality))

    def cascade(
        self, policy: SlaPolicy, slo: RequestSlo, chosen: Candidate, cls: str | None, situation: Situation
    ) -> dict[str, Any] | None:
        """Whether the chosen plan also gets the confidence cascade's second step, priced as the router's cascade
        runs it: the next model answers again over the same passages for ``escalate_share`` of the requests, so
        the plan is expected to take its own predicted latency plus that share of the next model's (same policy,
        under its load), and its worst case grows by one call of the next model. It gets the step when that
        expected latency fits the request's target, the grown worst case its cost cap, and the tenant's budget
        the grown reservation. None: no cascade is configured for this model."""
        cfg = self.config.router.cascade
        target = escalation_target(cfg, [m.id for m in self.config.models], chosen.key.model)
        if target is None:
            return None
        out: dict[str, Any] = {"to": target, "escalate_share": cfg.escalate_share}
        if slo.floor.models is not None and target not in slo.floor.models:
            return {**out, "planned": False, "why_not": f"tier {slo.tier!r} does not allow {target!r}"}
        m = self.config.model(target)
        chunk_cache = m.chunk_cache.enabled and CHUNK_CACHE in m.capabilities
        key = PlanKey(chosen.key.policy, target, m.speculative is not None, chunk_cache)
        est = self.estimator.predict(key, cls)
        step_s = est.latency_s + self.load.wait(target, est.latency_s, priority=slo.priority)
        expected_s = chosen.pred_latency + cfg.escalate_share * step_s
        dearest = max(policy.price(target).prompt_per_1m, policy.price(target).completion_per_1m)
        # The plan with the second step in its worst case, held to the same caps and budget rules as any plan.
        grown = dataclasses.replace(
            chosen,
            worst_tokens=chosen.worst_tokens + m.max_model_len,
            worst_micros=chosen.worst_micros + math.ceil(m.max_model_len * dearest),
        )
        out |= {
            "step_latency_s": round(step_s, 3),
            "expected_latency_s": round(expected_s, 3),
            "worst_case_tokens": grown.worst_tokens,
        }
        why_not = first_failure((*CAP_RULES, *BUDGET_RULES), grown, situation)
        if expected_s * 1000 > slo.latency_ms:
            why_not = (
                f"the plan's {chosen.pred_latency:.2f} s and {cfg.escalate_share:.0%} of {target}'s {step_s:.2f} s "
                f"expect {expected_s:.2f} s, over the {slo.latency_ms} ms target"
            )
        if why_not is not None:
            return {**out, "planned": False, "why_not": why_not}
        return {**out, "planned": True, "worst_micros": grown.worst_micros}

    def per_second(self, slo: RequestSlo) -> float:
        """The quality a second of predicted latency must buy for this request: its tier's, else the router's."""
        if slo.quality_per_second is not None:
            return slo.quality_per_second
        return self.config.router.quality_per_second or 0.0

    def choose(
        self,
        policy: SlaPolicy,
        slo: RequestSlo,
        probs: dict[str, float],
        cls: str | None,
        pinned_policy: str | None,
        pinned_model: str | None,
        remaining: tuple[int | None, int | None, str | None],
    ) -> Choice:
        """The plan for one request: the best expected quality among the candidates every rule admits
        (`router/eligibility.py`), marked degraded when load ruled out a better one; with none that fits even
        unloaded, the fastest as best effort unless that would hurt a higher tier. Raises what the request
        gets instead: no plan allowed, over its cost cap, out of budget, or overloaded (429 with a retry)."""
        cands = self.candidates(policy, slo, probs, cls, pinned_policy, pinned_model)
        if not cands:
            raise PlanUnavailableError(
                f"tier {slo.tier!r} allows no plan for this request (quality floor {slo.floor.min_policy!r}"
                + (f", models {slo.floor.models}" if slo.floor.models else "")
                + ")"
            )
        remaining_t, remaining_c, period = remaining
        # One factor per priority for this decision (each sorts the recent ratios; the rules ask often).
        factor_of = functools.cache(self.calibrator.factor)
        scale = factor_of(slo.priority)
        now = self.load.now()
        situation = Situation(
            slo=slo,
            load=self.load,
            now=now,
            factor_of=factor_of,
            remaining_tokens=remaining_t,
            remaining_micros=remaining_c,
            on_track=[
                j
                for j in self.load.jobs.values()
                if j.priority >= slo.priority and now + factor_of(j.priority) * self.load.finish_in(j) <= j.deadline
            ],
            higher=[(n, t) for n, t in policy.tiers.items() if t.priority > slo.priority],
            fastest_for=self.fastest_for,
            headroom=policy.controller.headroom,
        )
        latency_s = situation.latency_s
        unloaded: list[Candidate] = []
        eligible: list[Candidate] = []
        capped = budgeted = 0
        for c in cands:
            model = c.key.model
            wait = self.load.wait(model, c.est.latency_s, priority=slo.priority)
            c.pred_raw = c.est.latency_s + wait
            # Calibration corrects the load model; with nothing in flight on the model there is no load to
            # correct, and the plan's own p95 stands (a high factor must never shed requests on an idle worker).
            factor = scale if self.load.backlog(model) > 0 else 1.0
            c.pred_latency = factor * c.pred_raw
            c.pred_ttft = factor * (c.est.ttft_s + self.load.wait(model, c.est.ttft_s, priority=slo.priority))
            c.why_not = first_failure(CAP_RULES, c, situation)
            if c.why_not is not None:
                continue
            capped += 1
            c.why_not = first_failure(BUDGET_RULES, c, situation)
            if c.why_not is not None:
                continue
            budgeted += 1
            if fits_unloaded(c, situation):
                unloaded.append(c)
            c.why_not = first_failure(LOAD_RULES, c, situation)
            if c.why_not is None:
                eligible.append(c)
        described = [c.describe() for c in cands]
        if not capped:
            raise PlanUnavailableError(
                "every allowed plan's worst case is over this request's cost cap (x-budget-tokens or the "
                f"tier's max per request); the smallest is {min(c.worst_tokens for c in cands)} tokens"
            )
        if not budgeted:
            SHED.labels(slo.tier, "budget").inc()
            raise BudgetExhaustedError(
                f"tenant {slo.tenant!r} has no budget left for any allowed plan this {period}",
                retry_after=seconds_to_reset(period or "day"),
            )
        if eligible:
            rate = self.per_second(slo)
            chosen = self.best(eligible, rate)
            best_unloaded = self.best(unloaded, rate) if unloaded else chosen
            # A request that names its model is never escalated, as with the controller off.
            cascade = self.cascade(policy, slo, chosen, cls, situation) if pinned_model is None else None
            if best_unloaded.key != chosen.key:
                return Choice(chosen, described, degraded=True, unloaded=best_unloaded.label(), cascade=cascade)
            return Choice(chosen, described, cascade=cascade)
        if not unloaded:
            # No plan meets the target even alone: run the fastest unless that would hurt a higher tier.
            within = [c for c in cands if c.why_not is None or c.why_not.startswith("predicted")]
            fastest = min(within or cands, key=lambda c: c.pred_latency)
            if fastest.why_not is None or self.load.backlog(fastest.key.model) < fastest.est.latency_s:
                fastest.why_not = None
                return Choice(fastest, described, best_effort=True)
        SHED.labels(slo.tier, "overload").inc()
        wait = min(c.pred_latency - latency_s for c in (unloaded or cands))
        retry = int(min(policy.controller.max_retry_after_s, max(1, math.ceil(wait))))
        raise OverloadedError(
            f"overloaded: every plan tier {slo.tier!r} allows is predicted to miss {slo.latency_ms} ms "
            f"(queue wait {self.load.backlog(cands[0].key.model):.1f} s); retry after {retry} s",
            retry_after=retry,
        )
