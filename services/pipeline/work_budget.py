"""A tenant's budget for work outside the answer path (embeddings, uploads): the worst case reserved before the
work, what it spent charged after, nothing when it failed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.pipeline.clients import RouterClient


@dataclass
class Spend:
    tokens: int = 0  # what the work spent; set by the caller once it has succeeded


@asynccontextmanager
async def work_budget(
    router: RouterClient | None, tenant: str | None, model: str, worst_tokens: int, kind: str
) -> AsyncIterator[Spend]:
    """Reserve ``worst_tokens`` of ``model`` for ``tenant`` (a 429 `insufficient_quota` when its budget cannot cover
    them), run the block, then charge the ``Spend`` it set. No tenant, no router, or a tenant without a budget:
    nothing is reserved or charged."""
    spend = Spend()
    ticket = f"{kind}-{uuid.uuid4().hex}"
    budgeted = False
    if tenant is not None and router is not None:
        budgeted = await router.reserve_work(tenant, ticket, model, worst_tokens)
    try:
        yield spend
    finally:
        if budgeted and router is not None:
            await router.settle_work(ticket, model, spend.tokens)
