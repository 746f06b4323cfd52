"""The edge's middleware, outermost first: the body limit, request metrics, API keys."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.sla import PolicyStore
from services import metrics
from services.errors import PayloadTooLargeError
from services.http.errors import error_body, json_error


class BodyLimitMiddleware:
    """Refuses bodies over the limit, by Content-Length up front or by counting as they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = PayloadTooLargeError(
            f"the request body is over the limit of {self.max_bytes} bytes", code="payload_too_large"
        )
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await json_error(too_big)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_big
            return message

        await self.app(scope, counting_receive, send)


class ObserveMiddleware(BaseHTTPMiddleware):
    """Counts every request by route, method and status (401s and 413s too) and times it. Unknown paths
    count as "other", so a scan cannot grow the label set."""

    def __init__(self, app: ASGIApp, routes: Callable[[], set[str]]) -> None:
        super().__init__(app)
        self.routes = routes

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        route = request.url.path if request.url.path in self.routes() else "other"
        try:
            resp = await call_next(request)
        except PayloadTooLargeError as exc:  # a chunked body over the limit, found while it streamed in
            resp = json_error(exc)
        metrics.HTTP_REQUESTS.labels(route, request.method, str(resp.status_code)).inc()
        metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - start)
        return resp


class ApiKeyMiddleware(BaseHTTPMiddleware):
    """Tags each request with its tenant (by the SLA policy's keys) and, when keys are configured
    (``server.api_keys`` or tenants in the SLA policy), refuses a `/v1/` request without a valid one."""

    def __init__(self, app: ASGIApp, keys: set[str], sla_policy: PolicyStore | None) -> None:
        super().__init__(app)
        self.keys = keys
        self.sla_policy = sla_policy

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        policy = self.sla_policy.policy if self.sla_policy is not None else None
        request.state.tenant = policy.tenant_for_key(token) if policy is not None else None
        required = bool(self.keys) or (policy is not None and bool(policy.tenants))
        if required and request.url.path.startswith("/v1/") and token not in self.keys and request.state.tenant is None:
            return JSONResponse(
                error_body(
                    "a valid API key is required: Authorization: Bearer <key>",
                    "invalid_request_error",
                    None,
                    "invalid_api_key",
                ),
                status_code=401,
            )
        return await call_next(request)
