"""The edge's middleware, outermost first: the body limit, request metrics, API keys."""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
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


class ObserveMiddleware:
    """Counts every request that gets past the body limit by route, method and status (401s too) and times
    it to its response's start. Unknown paths count as "other", so a scan cannot grow the label set. Plain
    ASGI, as the API-key middleware is: Starlette's BaseHTTPMiddleware would run each request, and every
    chunk of a stream, through a task and a memory stream of its own."""

    def __init__(self, app: ASGIApp, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = scope["path"] if scope["path"] in self.routes else "other"
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            if not counted:
                counted = True
                metrics.HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
                metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - start)

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                count(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        except PayloadTooLargeError as exc:  # a chunked body over the limit, found while it streamed in
            if counted:
                raise
            await json_error(exc)(scope, receive, observing_send)
        except Exception:
            count(500)  # the server's error middleware answers it (a client gone away is not counted)
            raise


class ApiKeyMiddleware:
    """Tags each request with its tenant (by the SLA policy's keys) and, when keys are configured
    (``server.api_keys`` or tenants in the SLA policy), refuses a `/v1/` request without a valid one."""

    def __init__(self, app: ASGIApp, keys: set[str], sla_policy: PolicyStore | None) -> None:
        self.app = app
        self.keys = keys
        self.sla_policy = sla_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = Headers(scope=scope).get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        policy = self.sla_policy.policy if self.sla_policy is not None else None
        tenant = policy.tenant_for_key(token) if policy is not None else None
        scope.setdefault("state", {})["tenant"] = tenant  # what `request.state.tenant` reads
        required = bool(self.keys) or (policy is not None and bool(policy.tenants))
        if required and scope["path"].startswith("/v1/") and token not in self.keys and tenant is None:
            response = JSONResponse(
                error_body(
                    "a valid API key is required: Authorization: Bearer <key>",
                    "invalid_request_error",
                    None,
                    "invalid_api_key",
                ),
                status_code=401,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
