"""The SLA budget controller: for each request, the plan with the best expected quality net of its predicted
latency (``router.quality_per_second`` or the tier's, the router's rule) whose predicted latency, TTFT and cost
fit the request's SLO and its tenant's remaining budget (ties go to the cheaper plan); under overload it degrades
lower tiers first, then sheds with 429 + Retry-After.

Inputs per plan (policy × model × speculation, with the chunk-KV cache where the worker has it):
  - latency and TTFT p95 service times and token means from `Estimator` (per query class),
  - the queue wait the requests in flight add (`LoadModel`, processor sharing per model pool),
  - expected quality: the router's class probabilities × a per-policy, per-class F1 table,
  - worst-case tokens (LLM calls at most × max_model_len), what a budget reservation must cover.

Every decision explains itself in the trace (`plan.sla`): the candidates with their predictions and
why each was or was not eligible.

The candidates and the choice among them are `router/planning.py`'s; this module commits a choice (admission
into the load model, the budget reservation, the ticket), settles it, learns from it and reports.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from core.capabilities import PRIORITY_SCHEDULING
from router.budgets import MICRO, BudgetLedger, seconds_to_reset
from router.calibration import LatencyCalibration
from router.config import RouterSettings
from router.eligibility import (
    Candidate,
)
from router.errors import BudgetExhaustedError
from router.estimates import Estimator, Job, LoadModel, PlanKey
from router.plan import Admission, Complexity, Outcome, Plan, RouteDecision, Settlement
from router.planning import Planner
from router.priors import LatencyPriors
from router.quality import CLASSES, QualityTable
from router.settlement import Settlements, charge
from router.shared_load import JOB_TTL_S, SYNC_EVERY_S, SharedLoad, merge_foreign_jobs
from router.sla import PolicyStore, RequestSlo, SlaPolicy, resolve
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
        self.planner = Planner(
            config, self.estimator, self.load, self.calibrator, quality=quality, model_quality=model_quality
        )
        self._lock = threading.RLock()
        self._tidying: asyncio.Future[None] | None = None
        # Several router replicas: the others' jobs in this load model (ticket -> job id), from the shared view.
        self.shared = shared
        self._foreign: dict[str, int] = {}
        self._synced_at = -math.inf
        POLICY_VERSION.set(store.version)

    def calibration(self, priority: int | None = None) -> float:
        return self.calibrator.factor(priority)

    def quality_table(self, policy: SlaPolicy) -> dict[str, Any]:
        return self.planner.quality_table(policy)

    best = staticmethod(Planner.best)

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
                choice = self.planner.choose(policy, slo, probs, cls, pinned_policy, pinned_model, remaining)
                chosen, cascade = choice.chosen, choice.cascade
                if dry_run:
                    break
                job = self.load.admit(chosen.key.model, slo.priority, chosen.est.median_s, slo.latency_ms / 1000)
            try:
                period, granted = await self._reserve(policy, slo, chosen, cascade, ticket_id)
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
            if choice.degraded:
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
            escalate_to=cascade["to"] if cascade is not None and cascade["planned"] else None,
        )
        rate = self.planner.per_second(slo)
        reason = (
            f"tier {slo.tier!r}: {chosen.label()} has the best expected quality ({chosen.quality:.3f}) "
            + (f"net of {rate:g} a second " if rate else "")
            + f"within {slo.latency_ms} ms (predicted {chosen.pred_latency:.2f} s)"
        )
        if choice.degraded:
            reason += f"; degraded under load from {choice.unloaded}"
        if cascade is not None:
            reason += (
                f"; cascade: {cascade['to']!r} answers again below confidence "
                f"{self.config.router.cascade.min_confidence} (expected {cascade['expected_latency_s']:.2f} s)"
                if cascade["planned"]
                else f"; no cascade to {cascade['to']!r}: {cascade['why_not']}"
            )
        if choice.best_effort:
            reason = (
                f"tier {slo.tier!r}: no plan meets {slo.latency_ms} ms even unloaded; the fastest, {chosen.label()}"
            )
        admission = Admission(
            ticket=ticket,
            **slo.describe(),
            cls=cls,
            degraded=choice.degraded,
            queue_wait_s=round(max(0.0, chosen.pred_latency - chosen.est.latency_s), 3),
            calibration=round(self.calibration(slo.priority), 3),
            candidates=choice.candidates,
            policy_version=self.store.version,
            cascade={k: v for k, v in cascade.items() if k != "worst_micros"} if cascade is not None else None,
        )
        return RouteDecision(plan=plan, reason=reason, sla=admission)

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

    async def _reserve(
        self, policy: SlaPolicy, slo: RequestSlo, c: Candidate, cascade: dict[str, Any] | None, ticket: str
    ) -> tuple[str | None, bool]:
        if cascade is not None and cascade["planned"]:
            # The cascade's second step is in the worst case: one more call of the next model.
            return await self._hold(policy, slo.tenant, ticket, cascade["worst_case_tokens"], cascade["worst_micros"])
        return await self._hold(policy, slo.tenant, ticket, c.worst_tokens, c.worst_micros)

    async def _hold(
        self, policy: SlaPolicy, tenant: str | None, ticket: str, tokens: int, micros: int
    ) -> tuple[str | None, bool]:
        """Reserve ``tokens`` and ``micros`` of the tenant's budget under ``ticket``: (its period, granted), or
        (None, True) for a tenant without a budget."""
        entry = policy.tenants.get(tenant) if tenant else None
        if entry is None or entry.budget is None:
            return None, True
        b = entry.budget
        granted, _usage = await self.ledger.reserve(
            ticket,
            tenant,  # type: ignore[arg-type]
            b.period,
            tokens,
            micros,
            b.tokens,
            None if b.cost is None else round(b.cost * MICRO),
            lease_s=policy.controller.ticket_lease_s,
        )
        return b.period, granted

    # -- work outside the answer path (embeddings) -----------------------------------------------
    async def reserve_work(self, tenant: str | None, ticket: str, model: str, worst_tokens: int) -> bool:
        """Before a request that spends a tenant's budget outside the answer path (the embeddings API): reserve
        its worst case (``worst_tokens`` prompt tokens of ``model``), or refuse with BudgetExhaustedError. False:
        the tenant has no budget, so nothing is reserved (and `settle_work` is not needed)."""
        policy = self.store.policy
        micros = math.ceil(worst_tokens * policy.price(model).prompt_per_1m)
        period, granted = await self._hold(policy, tenant, ticket, worst_tokens, micros)
        if period is None:
            return False
        if not granted:
            raise BudgetExhaustedError(
                f"tenant {tenant!r} has no budget left for {worst_tokens} tokens this {period}",
                retry_after=seconds_to_reset(period),
            )
        return True

    async def settle_work(self, ticket: str, model: str, tokens: int) -> dict[str, Any] | None:
        """Charge what a `reserve_work` request used (``tokens`` prompt tokens of ``model``; 0 when it failed)."""
        micros = math.ceil(tokens * self.store.policy.price(model).prompt_per_1m)
        return await self.settlements.settle(ticket, tokens, micros)

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
            learned = outcome.ok and not outcome.cache_hit and not outcome.escalated_to
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
        # An escalated answer's time holds the next model's step too: it teaches neither the plan's service time
        # nor the calibration of its prediction (the plan's own step is learned from the answers that stood).
        learns = ok and not outcome.cache_hit and not outcome.escalated_to
        if learns and ticket.predicted_s > 0:
            self.calibrator.observe(ticket.slo.priority, latency, ticket.predicted_s)
        if learns and job is not None and latency > 0:
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
                if outcome.ok and not outcome.cache_hit and not outcome.escalated_to:
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
        """What is in force. For a tenant caller, only its own entry and usage, and nothing that counts other
        tenants' traffic (in-flight requests, backlogs, learned latencies, SLO attainment) or names the
        operator's files: those are the operator's view."""
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
        own = {
            "enabled": True,
            "caller": tenant,
            "policy": public,
            "policy_version": self.store.version,
            "tenants": tenants,
            "budget_store": self.ledger.name,
            "observed_at": time.time(),
        }
        if tenant is not None:
            return own
        return {
            **own,
            "policy_status": self.store.status(),
            "quality_table": self.quality_table(policy),
            "estimates": self.estimator.table(),
            "in_flight": in_flight,
            "calibration": round(self.calibration(), 3),
            "calibration_by_priority": self.calibrator.by_priority(),
            "backlog_s": backlog,
            "slo_attainment": {t: round(sum(r) / len(r), 4) for t, r in self._recent.items() if r},
        }
