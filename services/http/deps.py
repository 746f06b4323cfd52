"""What the routes depend on: the RagService (built on first use when the app was given a factory)
and a request's SLA context."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from router.plan import SlaContext
from router.sla import HEADERS as SLA_HEADERS
from router.sla import PolicyStore
from services.errors import InvalidRequestError
from services.pipeline.service import RagService

# The request header that asks for at least a corpus generation (read-your-writes across retriever replicas),
# and the response header that carries the generation a write made.
MIN_GENERATION_HEADER = "x-ragyard-min-generation"
GENERATION_HEADER = "X-Ragyard-Generation"


class ServiceHolder:
    """The app's RagService, or the coroutine that builds it (awaited once, on the first request)."""

    def __init__(self, service_or_factory: RagService | Callable[[], Awaitable[RagService]]) -> None:
        self._service = service_or_factory if isinstance(service_or_factory, RagService) else None
        self._factory = None if isinstance(service_or_factory, RagService) else service_or_factory
        self._lock = asyncio.Lock()

    async def get(self) -> RagService:
        if self._service is None:
            async with self._lock:
                if self._service is None:
                    assert self._factory is not None
                    self._service = await self._factory()
        return self._service


async def service(request: Request) -> RagService:
    holder: ServiceHolder = request.app.state.service
    return await holder.get()


def sla_context(request: Request) -> SlaContext | None:
    """The tenant and the SLA headers, when the SLA controller is on (None otherwise)."""
    store: PolicyStore | None = request.app.state.sla_policy
    if store is None:
        return None
    headers = {h: request.headers[h] for h in SLA_HEADERS if h in request.headers}
    return SlaContext(tenant=getattr(request.state, "tenant", None), headers=headers)


def min_generation(request: Request) -> int:
    """The corpus generation the request asks to read at least (its X-Ragyard-Min-Generation; 0: any)."""
    raw = request.headers.get(MIN_GENERATION_HEADER)
    if raw is None:
        return 0
    if not raw.strip().isdigit() or len(raw.strip()) > 15:
        raise InvalidRequestError(
            f"{MIN_GENERATION_HEADER} must be a generation a write returned (a whole number), not {raw[:40]!r}",
            param=MIN_GENERATION_HEADER,
            code="invalid_min_generation",
        )
    return int(raw)


# A route's parameter ``svc: Service`` is the app's RagService.
Service = Annotated[RagService, Depends(service)]
