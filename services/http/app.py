"""The HTTP app: OpenAI-compatible chat completions, /v1/qa, /v1/plan, /v1/documents, /v1/sla, health
and metrics, assembled from `services/http/` (one module per concern; see its package docstring).

Every error leaves here in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
with the status that fits: a client's mistake is a 4xx, never a 500 (`services/http/errors.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from router.sla import PolicyStore
from services.http import completions, documents, errors, openai, ops, qa, vectors, web
from services.http.deps import ServiceHolder
from services.http.middleware import (
    ApiKeyMiddleware,
    BodyGuardMiddleware,
    BrowserGuardMiddleware,
    CancelOnDisconnectMiddleware,
    ObserveMiddleware,
    RequestIdMiddleware,
)
from services.http.ratelimit import RateLimitMiddleware
from services.pipeline.service import RagService
from services.pipeline.telemetry import setup_tracing

ROUTERS = (ops.router, openai.router, completions.router, vectors.router, qa.router, documents.router)


def _lifespan(service_or_factory: Any) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up work: the stored corpus's chunk KV is computed in the background (when a model's engine does
    that), so the first question about a document is as fast as the hundredth; the app answers meanwhile."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if isinstance(service_or_factory, RagService) and service_or_factory.corpus.precompute_models():
            task = asyncio.create_task(service_or_factory.corpus.warm_chunk_kv())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    return lifespan


def create_app(
    service_or_factory: RagService | Callable[[], Awaitable[RagService]],
    *,
    max_body_bytes: int = 1 << 20,
    max_upload_bytes: int = 32 << 20,
    max_json_depth: int = 32,
    api_keys: list[str] | None = None,
    allowed_hosts: list[str] | None = None,
    allowed_origins: list[str] | None = None,
    sla_policy: PolicyStore | None = None,
    rate_limit_url: str | None = None,
    behind_serve: bool = False,
    web_chat: bool = True,
) -> FastAPI:
    """The FastAPI app over a RagService (or a coroutine that builds one, awaited on first use).

    ``api_keys``: operator keys. ``sla_policy``: the SLA policy store (when the controller is on); its
    tenants' API keys are accepted besides, and each request is tagged with its principal.
    ``allowed_hosts`` (None: any Host) and ``allowed_origins``: the browser guard's lists.
    ``rate_limit_url``: where the tenants' rate limits count (redis://...; None: in this process).
    ``behind_serve``: Serve's proxy sets the X-Request-Id response header (so this app does not).
    ``web_chat``: serve the web chat page at ``/`` (services/web/)."""
    setup_tracing()
    app = FastAPI(
        title="Ragyard", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=_lifespan(service_or_factory)
    )
    if sla_policy is None and isinstance(service_or_factory, RagService) and service_or_factory.config.sla.enabled:
        cfg = service_or_factory.config
        sla_policy = PolicyStore(
            cfg.sla.policy_path, reload_interval_s=cfg.sla.reload_interval_s, models=[m.id for m in cfg.models]
        )
    app.state.service = ServiceHolder(service_or_factory)

    app.state.sla_policy = sla_policy
    for router in ROUTERS:
        app.include_router(router)
    errors.install(app)
    if web_chat:
        web.install(app)
    known = frozenset(r.path for router in ROUTERS for r in router.routes if isinstance(r, APIRoute))
    # The last added runs first: metrics (which count every refusal below), the body guard, the disconnect
    # watch (a client that leaves cancels what runs below it), the browser guard, API keys, then the tenant's
    # rate limits.
    app.add_middleware(RateLimitMiddleware, sla_policy=sla_policy, url=rate_limit_url)
    app.add_middleware(ApiKeyMiddleware, keys=list(api_keys or []), sla_policy=sla_policy)
    app.add_middleware(BrowserGuardMiddleware, allowed_hosts=allowed_hosts, allowed_origins=list(allowed_origins or []))
    if not behind_serve:
        # Serve's proxy cancels a request whose client left by itself; a watch here would add a pending receive
        # per request on the gateway's loop (a small request waited 0.7 s longer beside a large embedding).
        app.add_middleware(CancelOnDisconnectMiddleware)
    app.add_middleware(
        BodyGuardMiddleware,
        max_bytes=max_body_bytes,
        max_depth=max_json_depth,
        uploads={"/v1/documents": max(max_upload_bytes, max_body_bytes)},
    )
    app.add_middleware(ObserveMiddleware, routes=known)
    app.add_middleware(RequestIdMiddleware, set_header=not behind_serve)
    return app


def create_app_for(
    service: RagService, sla_policy: PolicyStore | None = None, *, behind_serve: bool = False
) -> FastAPI:
    """`create_app` with the limits, keys and browser guard of the service's ``server`` config."""
    server = service.config.server
    return create_app(
        service,
        max_body_bytes=server.max_body_bytes,
        max_upload_bytes=server.max_upload_bytes,
        max_json_depth=server.max_json_depth,
        api_keys=server.api_keys,
        allowed_hosts=server.effective_allowed_hosts(),
        allowed_origins=server.allowed_origins,
        sla_policy=sla_policy,
        rate_limit_url=service.config.sla.budget_url,
        behind_serve=behind_serve,
        web_chat=server.web_chat,
    )
