"""Settling admitted requests with the budget ledger: what an outcome costs, charging it, keeping the
charges the ledger's store refused for a later try, and releasing by lease the reservations nobody
reported (the SLA controller's tickets; the reservations themselves live in the ledger)."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from cache.errors import BackendUnavailableError
from router.budgets import BudgetLedger
from router.plan import Outcome
from router.sla import SlaPolicy
from router.sla_metrics import TICKETS_EXPIRED, UNSETTLED

logger = logging.getLogger(__name__)

# How often a router asks the ledger to release the reservations whose lease has passed.
EXPIRE_EVERY_S = 5.0


def charge(policy: SlaPolicy, model: str, outcome: Outcome) -> tuple[int, int]:
    """Tokens and micro-units to charge for an outcome: what the model ran for it, delivered or not (a cascade's
    second answer at the next model's price); a cached answer its original tokens times the policy's
    `cache_charge`. (The ledger caps both at the reservation.)"""
    parts = [(model, outcome.prompt_tokens, outcome.completion_tokens)]
    if outcome.escalated_to:
        # The cascade's second answer is the next model's tokens, at its price.
        up_prompt = min(outcome.escalation_prompt_tokens, outcome.prompt_tokens)
        up_completion = min(outcome.escalation_completion_tokens, outcome.completion_tokens)
        parts = [
            (model, outcome.prompt_tokens - up_prompt, outcome.completion_tokens - up_completion),
            (outcome.escalated_to, up_prompt, up_completion),
        ]
    tokens = cost = 0.0
    for who, prompt, completion in parts:
        if outcome.cache_hit:
            prompt = math.ceil(prompt * policy.cache_charge)
            completion = math.ceil(completion * policy.cache_charge)
        tokens += prompt + completion
        price = policy.price(who) if who else None
        cost += prompt * price.prompt_per_1m + completion * price.completion_per_1m if price else 0.0
    return int(tokens), math.ceil(cost)


class Settlements:
    def __init__(self, ledger: BudgetLedger) -> None:
        self.ledger = ledger
        # Charges the ledger could not take (its store was down past the client's own retries), retried on
        # later calls; ticket -> (tokens, micros).
        self.pending: dict[str, tuple[int, int]] = {}
        self._expired_at = 0.0
        self._lock = threading.Lock()

    async def settle(self, ticket: str, tokens: int, micros: int) -> dict[str, Any] | None:
        """Charge a ticket; the tenant's usage after it, or None (not open, or the store is down: then the
        charge waits in `pending`, and the lease bounds how long the reservation can stay)."""
        try:
            usage = await self.ledger.settle(ticket, tokens, micros)
        except BackendUnavailableError as exc:
            logger.warning("SLA ticket %s not settled yet, retried later: %s", ticket, exc)
            with self._lock:
                self.pending[ticket] = (tokens, micros)
                UNSETTLED.set(len(self.pending))
            return None
        return usage.as_dict() if usage is not None else None

    async def tidy(self, now: float | None = None) -> None:
        """Retry the pending charges and, every few seconds, release the reservations whose lease has
        passed, whichever router made them (this one before a restart included)."""
        with self._lock:
            pending, self.pending = self.pending, {}
        for ticket, (tokens, micros) in pending.items():
            try:
                await self.ledger.settle(ticket, tokens, micros)
            except BackendUnavailableError:
                with self._lock:
                    self.pending[ticket] = (tokens, micros)
        UNSETTLED.set(len(self.pending))
        now = time.time() if now is None else now
        if now - self._expired_at < EXPIRE_EVERY_S:
            return
        self._expired_at = now
        try:
            released = await self.ledger.expire(now)
        except BackendUnavailableError as exc:
            logger.warning("could not expire SLA tickets: %s", exc)
            return
        for r in released:
            TICKETS_EXPIRED.inc()
            logger.warning(
                "SLA ticket %s of %s expired without a report; its reservation of %d tokens is released",
                r.ticket,
                r.tenant,
                r.tokens,
            )
