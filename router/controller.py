"""The SLA budget controller: for each request, the plan with the best expected quality whose
predicted latency, TTFT and cost fit the request's SLO and its tenant's remaining budget (ties go to
the cheaper plan); under overload it degrades lower tiers first, then sheds with 429 + Retry-After.

Inputs per plan (policy × model × speculation, with the chunk-KV cache where the worker has it):
  - latency and TTFT p95 service times and token means from `Estimator` (per query class),
  - the queue wait the requests in flight add (`LoadModel`, processor sharing per model pool),
  - expected quality: the router's class probabilities × a per-policy, per-class F1 table,
  - worst-case tokens (LLM calls at most × max_model_len), what a budget reservation must cover.

Every decision explains itself in the trace (`plan.sla`): the candidates with their predictions and
why each was or was not eligible.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.capabilities import CHUNK_CACHE, PRIORITY_SCHEDULING, SPEC_PER_REQUEST
from retrieval.policies.registry import choosable_policies, get_policy, policy_rank
from router.budgets import MICRO, BudgetLedger, seconds_to_reset
from router.calibration import LatencyCalibration
from router.config import RouterSettings
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
from router.estimates import Estimator, Job, LoadModel, PlanKey
from router.plan import Admission, Complexity, Outcome, Plan, RouteDecision, Settlement
from router.priors import LatencyPriors
from router.quality import CLASSES, QualityTable, measured_quality
from router.settlement import Settlements, charge
from router.shared_load import JOB_TTL_S, SYNC_EVERY_S, SharedLoad, merge_foreign_jobs
from router.sla import PolicyStore, RequestSlo, SlaPolicy, TierPolicy, resolve
from router.sla_metrics import (
    DECISIONS,
    DEGRADED,
    IN_FLIGHT,
    POLICY_VERSION,
    SHED,
    SLA_ATTAINMENT,
    SLA_REQUESTS,
    SPENT_COST,
    SPENT_TOKENS,
)

logger = logging.getLogger(__name__)


# Expected qualities this close count as equal (the table's F1 differences below it are noise).
QUALITY_TIE = 0.005


@dataclass
class _Ticket:
    """What this router remembers of an admitted request, for its load model and SLO figures. The budget
    reservation itself is the ledger's (in Redis, when configured), under the same id: it outlives this
    router, and any router settles or expires it."""

    id: str
    slo: RequestSlo
    key: PlanKey
    cls: str | None
    budgeted: bool
    job_id: int
    predicted_s: float = 0.0


class SlaController:
    def __init__(
        self,
        config: RouterSettings,
        store: PolicyStore,
        ledger: BudgetLedger,
        *,
        quality: dict[str, dict[str, float]] | None = None,
        class_prior: dict[str, float] | None = None,
        model_quality: QualityTable | None = None,
        priors: LatencyPriors | None = None,
        shared: SharedLoad | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.ledger = ledger
        self.measured_quality = quality if quality is not None else self._default_quality(config)
        # The router's model x policy x class table, when it has one: a stronger model can win on quality
        # and a cheaper one on latency and cost, as with the controller off.
        self.model_quality = model_quality
        self.class_prior = class_prior or dict.fromkeys(CLASSES, 1 / 3)
        settings = store.policy.controller
        self.priors = priors
        self.estimator = Estimator(window=settings.window, min_observations=settings.min_observations, priors=priors)
        self.load = LoadModel(
            {m.id: config.ray.worker_replicas for m in config.models},
            # The torch engine's step lock serves higher priorities first; vLLM batches without them.
            strict_priority={m.id for m in config.models if PRIORITY_SCHEDULING in m.capabilities},
        )
        self._tickets: dict[str, _Ticket] = {}
        # Charging the ledger, keeping refused charges for later, releasing lapsed leases.
        self.settlements = Settlements(ledger)
        self._recent: dict[str, deque[bool]] = {}
        # Observed / predicted latency of recent answers, per priority (router/calibration.py).
        self.calibrator = LatencyCalibration()
        self._lock = threading.RLock()
        self._tidying: asyncio.Future[None] | None = None
        # Several router replicas: the others' jobs in this load model (ticket -> job id), from the shared view.
        self.shared = shared
        self._foreign: dict[str, int] = {}
        self._synced_at = -math.inf
        POLICY_VERSION.set(store.version)

    @staticmethod
    def _default_quality(config: RouterSettings) -> dict[str, dict[str, float]]:
        if config.router.artifact:
            labels = Path(config.router.artifact).with_name("labels.jsonl")
            if labels.exists():
                return measured_quality(labels)
        return {}

    # -- planning ------------------------------------------------------------------------------
    def quality_table(self, policy: SlaPolicy) -> dict[str, Any]:
        """The table in force: the SLA policy's own (policy x class), else the model x policy x class table,
        else the per-policy table measured from the classifier's labels."""
        if policy.quality is not None:
            return policy.quality
        if self.model_quality is not None:
            return {"by_model": self.model_quality.table, "version": self.model_quality.version}
        return self.measured_quality

    def _by_class(self, policy: SlaPolicy, model: str, name: str) -> dict[str, float] | None:
        if policy.quality is not None:
            return policy.quality.get(name)
        if self.model_quality is not None and model in self.model_quality.table:
            return self.model_quality.table[model].get(name)
        return self.measured_quality.get(name)

    def _candidates(
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
                if any(self._by_class(policy, m.id, p) is not None for m in self.config.models)
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
                worst = self._max_calls(p) * m.max_model_len
                for spec in spec_options:
                    key = PlanKey(p, m.id, spec, m.chunk_cache.enabled and CHUNK_CACHE in m.capabilities)
                    est = self.estimator.predict(key, cls)
                    by_class = self._by_class(policy, m.id, p) or {}
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

    def _max_calls(self, policy: str) -> int:
        return get_policy(policy).max_llm_calls(self.config.retrieval)

    def _fastest_for(self, tier: TierPolicy, model: str) -> float:
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

    def calibration(self, priority: int | None = None) -> float:
        return self.calibrator.factor(priority)

    @staticmethod
    def best(candidates: list[Candidate]) -> Candidate:
        """The best expected quality; plans within QUALITY_TIE of it tie, and the tie goes to the cheaper,
        then the faster plan. (Rounding qualities into buckets would not: 0.5024 and 0.5026 fall in two.)"""
        top = max(c.quality for c in candidates)
        tied = [c for c in candidates if c.quality >= top - QUALITY_TIE - 1e-12]
        return max(tied, key=lambda c: (-c.expected_cost - c.expected_tokens * 1e-9, -c.pred_latency, c.quality))

    async def decide(
        self,
        *,
        tenant: str | None,
        headers: dict[str, str],
        complexity: Complexity | None,
        pinned_policy: str | None,
        pinned_model: str | None,
        top_k: int,
        max_tokens: int | None,
        cacheable: bool,
        use_response_cache: bool,
        dry_run: bool = False,
    ) -> RouteDecision:
        """Admit a request with the best plan that fits. ``dry_run`` (POST /v1/plan): the same choice,
        but nothing is reserved, admitted or counted, and the decision carries no ticket.

        The load view is read and updated under the controller's lock, which no ledger call is ever made
        under: the plan is admitted first, then its worst case is reserved in the ledger; a refused (or
        failed) reservation takes the admission back and the next best plan is tried."""
        policy = self.store.policy
        POLICY_VERSION.set(self.store.version)
        slo = resolve(policy, tenant, headers)
        probs = dict(complexity.probabilities or {}) if complexity and complexity.cls else self.class_prior
        cls = complexity.cls if complexity else None
        self._tidy_soon()
        # Unique across routers and restarts: a late report can only ever settle its own request.
        ticket_id = uuid.uuid4().hex
        period: str | None = None
        await self.sync()
        for _attempt in range(3):
            remaining = await self._remaining(policy, slo)
            with self._lock:
                self._expire_local()
                self.load.advance()
                chosen, info = self._choose(policy, slo, probs, cls, pinned_policy, pinned_model, remaining)
                if dry_run:
                    break
                job = self.load.admit(chosen.key.model, slo.priority, chosen.est.median_s, slo.latency_ms / 1000)
            try:
                period, granted = await self._reserve(policy, slo, chosen, ticket_id)
            except BaseException:
                with self._lock:
                    self.load.finish(job.id)
                raise
            if granted:
                break
            with self._lock:
                self.load.finish(job.id)
        else:
            SHED.labels(slo.tier, "budget").inc()
            raise BudgetExhaustedError(
                f"tenant {tenant!r} has no budget left for any allowed plan this {period}",
                retry_after=seconds_to_reset(period or "day"),
            )
        ticket: str | None = None
        if not dry_run:
            ticket = ticket_id
            with self._lock:
                IN_FLIGHT.labels(chosen.key.model).set(
                    sum(1 for j in self.load.jobs.values() if j.model == chosen.key.model)
                )
                self._tickets[ticket_id] = _Ticket(
                    ticket_id, slo, chosen.key, cls, period is not None, job.id, chosen.pred_raw
                )
            if self.shared is not None:
                await self.shared.publish(
                    ticket_id,
                    model=chosen.key.model,
                    priority=slo.priority,
                    service_s=chosen.est.median_s,
                    target_s=slo.latency_ms / 1000,
                    predicted_s=chosen.pred_raw,
                )
        if not dry_run:
            DECISIONS.labels(slo.tier, chosen.key.policy, chosen.key.model).inc()
            if info["degraded"]:
                DEGRADED.labels(slo.tier).inc()
        m = self.config.model(chosen.key.model)
        plan = Plan(
            policy=chosen.key.policy,
            top_k=top_k,
            model=chosen.key.model,
            max_tokens=max_tokens or m.default_max_tokens,
            use_response_cache=use_response_cache and cacheable,
            complexity=complexity,
            speculative=chosen.key.speculative,
            chunk_cache=chosen.key.chunk_cache,
        )
        reason = (
            f"tier {slo.tier!r}: {chosen.label()} has the best expected quality ({chosen.quality:.3f}) "
            f"within {slo.latency_ms} ms (predicted {chosen.pred_latency:.2f} s)"
        )
        if info["degraded"]:
            reason += f"; degraded under load from {info['unloaded']}"
        if info.get("best_effort"):
            reason = (
                f"tier {slo.tier!r}: no plan meets {slo.latency_ms} ms even unloaded; the fastest, {chosen.label()}"
            )
        admission = Admission(
            ticket=ticket,
            **slo.describe(),
            cls=cls,
            degraded=info["degraded"],
            queue_wait_s=round(max(0.0, chosen.pred_latency - chosen.est.latency_s), 3),
            calibration=round(self.calibration(slo.priority), 3),
            candidates=info["candidates"],
            policy_version=self.store.version,
        )
        return RouteDecision(plan=plan, reason=reason, sla=admission)

    def _choose(
        self,
        policy: SlaPolicy,
        slo: RequestSlo,
        probs: dict[str, float],
        cls: str | None,
        pinned_policy: str | None,
        pinned_model: str | None,
        remaining: tuple[int | None, int | None, str | None],
    ) -> tuple[Candidate, dict[str, Any]]:
        cands = self._candidates(policy, slo, probs, cls, pinned_policy, pinned_model)
        if not cands:
            raise PlanUnavailableError(
                f"tier {slo.tier!r} allows no plan for this request (quality floor {slo.floor.min_policy!r}"
                + (f", models {slo.floor.models}" if slo.floor.models else "")
                + ")"
            )
        remaining_t, remaining_c, period = remaining
        # One factor per priority for this decision (each sorts the recent ratios; the rules ask often).
        factor_of = functools.cache(self.calibration)
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
            fastest_for=self._fastest_for,
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
        info: dict[str, Any] = {"candidates": [c.describe() for c in cands], "degraded": False}
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
            chosen = self.best(eligible)
            best_unloaded = self.best(unloaded) if unloaded else chosen
            if best_unloaded.key != chosen.key:
                info["degraded"] = True
                info["unloaded"] = best_unloaded.label()
            return chosen, info
        if not unloaded:
            # No plan meets the target even alone: run the fastest unless that would hurt a higher tier.
            within = [c for c in cands if c.why_not is None or c.why_not.startswith("predicted")]
            fastest = min(within or cands, key=lambda c: c.pred_latency)
            if fastest.why_not is None or self.load.backlog(fastest.key.model) < fastest.est.latency_s:
                info["best_effort"] = True
                fastest.why_not = None
                return fastest, info
        SHED.labels(slo.tier, "overload").inc()
        wait = min(c.pred_latency - latency_s for c in (unloaded or cands))
        retry = int(min(policy.controller.max_retry_after_s, max(1, math.ceil(wait))))
        raise OverloadedError(
            f"overloaded: every plan tier {slo.tier!r} allows is predicted to miss {slo.latency_ms} ms "
            f"(queue wait {self.load.backlog(cands[0].key.model):.1f} s); retry after {retry} s",
            retry_after=retry,
        )

    # -- budgets -------------------------------------------------------------------------------
    async def _remaining(self, policy: SlaPolicy, slo: RequestSlo) -> tuple[int | None, int | None, str | None]:
        tenant = policy.tenants.get(slo.tenant) if slo.tenant else None
        if tenant is None or tenant.budget is None:
            return None, None, None
        b = tenant.budget
        usage = await self.ledger.usage(slo.tenant, b.period)  # type: ignore[arg-type]
        rt = None if b.tokens is None else b.tokens - usage.spent_tokens - usage.reserved_tokens
        rc = None if b.cost is None else round(b.cost * MICRO) - usage.spent_micros - usage.reserved_micros
        return rt, rc, b.period

    async def _reserve(self, policy: SlaPolicy, slo: RequestSlo, c: Candidate, ticket: str) -> tuple[str | None, bool]:
        tenant = policy.tenants.get(slo.tenant) if slo.tenant else None
        if tenant is None or tenant.budget is None:
            return None, True
        b = tenant.budget
        granted, _usage = await self.ledger.reserve(
            ticket,
            slo.tenant,  # type: ignore[arg-type]
            b.period,
            c.worst_tokens,
            c.worst_micros,
            b.tokens,
            None if b.cost is None else round(b.cost * MICRO),
            lease_s=policy.controller.ticket_lease_s,
        )
        return b.period, granted

    # -- feedback ------------------------------------------------------------------------------
    async def finish(self, ticket_id: str, outcome: Outcome) -> Settlement | None:
        """Settle a request: charge what it used (also when it failed or its client left, and a cached
        answer at the policy's `cache_charge`), learn its service time, count its SLO. Idempotent: a second
        report of the same ticket charges nothing. A ticket this router does not know (made before a
        restart, or by another router) is still settled in the ledger, and with a shared view its outcome
        goes to the router that admitted it, which learns from it."""
        with self._lock:
            ticket = self._tickets.pop(ticket_id, None)
            job = self.load.finish(ticket.job_id) if ticket is not None else None
        policy = self.store.policy
        model = ticket.key.model if ticket is not None else outcome.model
        tokens, micros = charge(policy, model, outcome)
        charged = None
        if ticket is None or ticket.budgeted:
            charged = await self.settlements.settle(ticket_id, tokens, micros)
        if ticket is None:
            if self.shared is not None:
                await self.shared.hand_over(ticket_id, outcome.model_dump(mode="json"))
            return Settlement(met=False, budget=charged) if charged is not None else None
        with self._lock:
            met = self._learn(ticket, job, outcome, tokens, micros)
        if self.shared is not None:
            learned = outcome.ok and not outcome.cache_hit
            ratio = [(ticket.slo.priority, outcome.latency_s, ticket.predicted_s)] if learned else []
            await self.shared.retract(ticket_id, ratio)
        return Settlement(met=met, budget=charged)

    def _learn(self, ticket: _Ticket, job: Job | None, outcome: Outcome, tokens: int, micros: int) -> bool:
        """What an ended request teaches: its service time, the calibration, its tier's SLO figures. Whether
        it met its SLO."""
        IN_FLIGHT.labels(ticket.key.model).set(sum(1 for j in self.load.jobs.values() if j.model == ticket.key.model))
        ok = outcome.ok
        if ticket.slo.tenant is not None and tokens:
            SPENT_TOKENS.labels(ticket.slo.tenant).inc(tokens)
            SPENT_COST.labels(ticket.slo.tenant).inc(micros / MICRO)
        latency = outcome.latency_s
        ttft = latency if outcome.ttft_s is None else outcome.ttft_s
        if ok and not outcome.cache_hit and ticket.predicted_s > 0:
            self.calibrator.observe(ticket.slo.priority, latency, ticket.predicted_s)
        if ok and not outcome.cache_hit and job is not None and latency > 0:
            share = min(1.0, job.attained / latency) if job.attained > 0 else 1.0
            self.estimator.observe(
                ticket.key,
                ticket.cls,
                job.attained or latency,
                ttft * share,
                outcome.prompt_tokens,
                outcome.completion_tokens,
            )
        met = (
            ok
            and latency * 1000 <= ticket.slo.latency_ms
            and (ticket.slo.ttft_ms is None or ttft * 1000 <= ticket.slo.ttft_ms)
        )
        SLA_REQUESTS.labels(ticket.slo.tier, "met" if met else ("missed" if ok else "failed")).inc()
        recent = self._recent.setdefault(ticket.slo.tier, deque(maxlen=200))
        recent.append(met)
        SLA_ATTAINMENT.labels(ticket.slo.tier).set(sum(recent) / len(recent))
        return met

    async def sync(self, *, force: bool = False) -> None:
        """Bring the shared view into this router (at most every SYNC_EVERY_S unless ``force``): the other
        routers' jobs into the load model, the outcomes they handed over into what this router learns, the
        shared ratios into its calibration."""
        if self.shared is None:
            return
        now = time.monotonic()
        if not force and now - self._synced_at < SYNC_EVERY_S:
            return
        self._synced_at = now
        view = await self.shared.sync()
        if view is None:
            return
        policy = self.store.policy
        with self._lock:
            self.load.advance()
            merge_foreign_jobs(self.load, self._foreign, view.jobs, own=self._tickets, router_id=self.shared.router_id)
            learned = []
            for t, raw in view.done:
                ticket = self._tickets.pop(t, None)
                if ticket is None:
                    continue
                ended = self.load.finish(ticket.job_id)
                outcome = Outcome.model_validate(raw)
                tokens, micros = charge(policy, ticket.key.model, outcome)
                self._learn(ticket, ended, outcome, tokens, micros)
                if outcome.ok and not outcome.cache_hit:
                    learned.append((ticket.slo.priority, outcome.latency_s, ticket.predicted_s))
            # The shared ratios, and the ones learned just now (on their way to the shared list).
            self.calibrator.replace(view.ratios + [(0.0, p, o / e) for p, o, e in learned if e > 0])
        if learned:
            await self.shared.retract(None, learned)

    def _expire_local(self) -> None:
        """Drop local tickets whose gateway never reported back (a crashed replica, a lost stream); their
        reservations are released by lease (``tidy``). Under the lock."""
        for job in self.load.expire(older_than_s=JOB_TTL_S):
            ticket = next((t for t in self._tickets.values() if t.job_id == job.id), None)
            if ticket is not None:
                del self._tickets[ticket.id]

    async def tidy(self, now: float | None = None) -> None:
        """Retry refused charges and release lapsed reservations (`router/settlement.py`)."""
        with self._lock:
            self._expire_local()
        await self.settlements.tidy(now)

    def _tidy_soon(self) -> None:
        """Tidy in the background, one run at a time: no request waits on a ledger that is down."""
        running = self._tidying is not None and not self._tidying.done()
        if not running or self._tidying.get_loop() is not asyncio.get_running_loop():  # type: ignore[union-attr]
            self._tidying = asyncio.ensure_future(self.tidy())

    # -- reporting -----------------------------------------------------------------------------
    async def snapshot(self, tenant: str | None = None) -> dict[str, Any]:
        """What is in force. For a tenant caller, only its own entry and usage (others' stay private)."""
        policy = self.store.policy
        tenants = {}
        for name, t in policy.tenants.items():
            if tenant is not None and name != tenant:
                continue
            entry: dict[str, Any] = {"tier": t.tier, "budget": t.budget.model_dump() if t.budget else None}
            if t.budget is not None:
                usage = await self.ledger.usage(name, t.budget.period)
                entry["usage"] = usage.as_dict()
                if t.budget.tokens is not None:
                    entry["remaining_tokens"] = t.budget.tokens - usage.spent_tokens - usage.reserved_tokens
                entry["resets_in_s"] = seconds_to_reset(t.budget.period)
            tenants[name] = entry
        with self._lock:
            self.load.advance()
            in_flight = len(self.load.jobs)
            backlog = {m: round(self.load.backlog(m), 3) for m in self.load.servers}
        public = policy.public()
        if tenant is not None:
            public["tenants"] = {n: v for n, v in public["tenants"].items() if n == tenant}
        return {
            "enabled": True,
            "caller": tenant,
            "policy": public,
            "policy_status": self.store.status(),
            "tenants": tenants,
            "budget_store": self.ledger.name,
            "quality_table": self.quality_table(policy),
            "estimates": self.estimator.table(),
            "in_flight": in_flight,
            "calibration": round(self.calibration(), 3),
            "calibration_by_priority": self.calibrator.by_priority(),
            "backlog_s": backlog,
            "slo_attainment": {t: round(sum(r) / len(r), 4) for t, r in self._recent.items() if r},
            "observed_at": time.time(),
        }
