"""The edge's middleware, outermost first: the request id, request metrics, the body guard, the browser
guard, API keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.nesting import lone_surrogate_at, nesting_depth, not_unicode, refuse_json_constant
from router.sla import PolicyStore
from services import metrics
from services.errors import AuthenticationError, InvalidRequestError, PayloadTooLargeError, PermissionDeniedError
from services.http.auth import KEYED_PATHS, OPERATOR_PATHS, KeyRing, bearer_token
from services.http.errors import json_error
from services.pipeline.telemetry import REQUEST_ID


class BodyGuardMiddleware:
    """Bounds every request body before a route parses it: over ``max_bytes`` is a 413, whether the
    length is declared or the body is chunked (it is read here, up to the limit, and handed on whole);
    JSON nested deeper than ``max_depth`` is a 400, so no parser recurses into it, and so is JSON whose text is
    not valid Unicode (`check_json`). Invalid JSON is left to the route, whose parser names the error.
    ``uploads``: a larger limit for a POST to these paths (document uploads: PDFs and Word files are larger
    than any chat request)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, max_depth: int = 32, uploads: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.uploads = dict(uploads or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        if scope.get("method") == "POST":
            limit = self.uploads.get(scope.get("path", ""), limit)
        too_big = PayloadTooLargeError(f"the request body is over the limit of {limit} bytes")
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            await json_error(too_big)(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body was in: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await json_error(too_big)(scope, receive, send)
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        # FastAPI parses a body with no content type as JSON too: the guard reads what a route would parse.
        if body.strip() and (not media or media == "application/json" or media.endswith("+json")):
            error = check_json(body, self.max_depth)
            if error is not None:
                await json_error(error)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # what follows the body: a disconnect, which a stream listens for

        await self.app(scope, replay, send)


class CancelOnDisconnectMiddleware:
    """A client that leaves before its response has started cancels the work done for it: the route runs as a
    task, cancelled when the server reports the disconnect, so a generation (and the retrieval before it) stops
    at its next step and the request is settled for what it ran. Once a response has started (a stream), the
    route's own disconnect handling takes over. Written by hand: Starlette stops a streaming response when its
    client leaves, but runs any other route to its end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        while True:  # the body guard has read it already: one message
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message)
            if not message.get("more_body", False):
                break
        gone: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        started = False

        async def inner_receive() -> Message:
            if body:
                return body.pop(0)
            return await asyncio.shield(gone)  # a stream listens for its client leaving

        async def inner_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set_result(message)
                    return

        route = asyncio.ensure_future(self.app(scope, inner_receive, inner_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({route, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not route.done() and not started:
                route.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await route
                return
            await route
        finally:
            watcher.cancel()
            if not route.done():
                route.cancel()


def check_json(body: bytes, max_depth: int) -> InvalidRequestError | None:
    """Why a JSON body is refused before any route parses it, or None (also when it is not JSON at all: the
    route's parser names that error). orjson reads it first (iteratively for the depth; it refuses documents over
    1,024 levels itself); what orjson refuses and Python's parser, which the routes use, would accept is looked
    at again: text that is not valid Unicode (a lone surrogate escape) is refused naming the field, and NaN or
    Infinity, which are not JSON, are refused too."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        # RFC 8259 JSON is UTF-8. Python's json also reads UTF-16 and UTF-32, which orjson (and so the depth
        # check) does not: refused here, such a body could not be bounded.
        return InvalidRequestError("the JSON body is not UTF-8", code="invalid_encoding")
    too_deep = InvalidRequestError(f"the JSON body is nested deeper than {max_depth} levels", code="json_too_deep")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc).lower() or "recursion" in str(exc).lower():
            return too_deep
        return _recheck(body, max_depth, too_deep)
    return too_deep if nesting_depth(doc) > max_depth else None


def _recheck(body: bytes, max_depth: int, too_deep: InvalidRequestError) -> InvalidRequestError | None:
    try:
        doc = json.loads(body, parse_constant=refuse_json_constant)
    except RecursionError:
        return too_deep
    except ValueError as exc:
        if "is not a JSON value" in str(exc):
            return InvalidRequestError(f"the request body is not valid JSON: {exc}", code="invalid_json")
        return None  # not JSON: the route says so
    if nesting_depth(doc) > max_depth:
        return too_deep
    where = lone_surrogate_at(doc)
    if where is not None:
        return InvalidRequestError(
            not_unicode(where),
            param=where,
            code="invalid_text",
        )
    return None


class BrowserGuardMiddleware:
    """Two checks for requests a browser may send on a page's behalf. A state-changing request
    (anything but GET, HEAD, OPTIONS) that carries an ``Origin`` must come from the server's own origin or
    one in ``allowed_origins``: a cross-site form may POST ``text/plain`` without a preflight, and that is a
    document upload. With ``allowed_hosts`` set, the ``Host`` header must name one of them (port ignored),
    so a DNS-rebound name cannot reach a server on loopback. Written here rather than Starlette's
    TrustedHostMiddleware because that answers in plain text, not the API's error shape."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None, allowed_origins: list[str]) -> None:
        self.app = app
        self.hosts = None if allowed_hosts is None or "*" in allowed_hosts else {h.lower() for h in allowed_hosts}
        self.any_origin = "*" in allowed_origins
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "").lower()
        if self.hosts is not None and _strip_port(host) not in self.hosts:
            error = PermissionDeniedError(
                f"host {host!r} is not served here (server.allowed_hosts)", code="host_not_allowed"
            )
            await json_error(error)(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in self.SAFE and not self.any_origin:
            own = urlsplit(origin).netloc.lower() == host if origin != "null" else False
            if not own and origin.rstrip("/").lower() not in self.origins:
                error = PermissionDeniedError(
                    f"origin {origin!r} may not send {scope['method']} requests here (server.allowed_origins)",
                    code="origin_not_allowed",
                )
                await json_error(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [::1]:8000
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class ObserveMiddleware:
    """Counts every request by route, method and status (413s and 401s too) and times
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
        except Exception:
            count(500)  # the server's error middleware answers it (a client gone away is not counted)
            raise


class ApiKeyMiddleware:
    """Tags each request with its principal (operator, tenant or anonymous) and, once keys are
    configured (``server.api_keys`` or tenants in the SLA policy), refuses a `/v1/` request without a valid
    key (401) and the operator routes (metrics, schema pages) to anyone but an operator."""

    def __init__(self, app: ASGIApp, keys: list[str], sla_policy: PolicyStore | None) -> None:
        self.app = app
        self.ring = KeyRing(keys)
        self.sla_policy = sla_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.sla_policy.policy if self.sla_policy is not None else None
        who = self.ring.identify(bearer_token(scope), policy)
        required = self.ring.required(policy)
        state = scope.setdefault("state", {})  # what `request.state` reads
        state.update(principal=who, tenant=who.tenant, auth_required=required)
        path = scope["path"]
        keyed = path.startswith("/v1/") or path in OPERATOR_PATHS or path in KEYED_PATHS
        if required and who.kind == "anonymous" and keyed:
            missing = AuthenticationError("a valid API key is required: Authorization: Bearer <key>")
            await json_error(missing)(scope, receive, send)
            return
        if required and path in OPERATOR_PATHS and not who.operator:
            denied = PermissionDeniedError(f"{path} needs an operator key (server.api_keys)", code="operator_only")
            await json_error(denied)(scope, receive, send)
            return
        await self.app(scope, receive, send)


REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


class RequestIdMiddleware:
    """Every request gets an id: the caller's ``X-Request-Id`` when it sends a sane one (at most 128 of
    ``A-Za-z0-9._:/+=@-``; anything else is a 400), else a new one. It is in ``request.state``, in the
    logging context (`services.pipeline.telemetry.REQUEST_ID`), on the request's spans, in vLLM's request ids,
    and in the response header. Under Serve the proxy has already put one in the request (the caller's or
    its own) and adds the response header itself, so ``set_header`` is off there."""

    def __init__(self, app: ASGIApp, set_header: bool = True) -> None:
        self.app = app
        self.set_header = set_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER)
        rid = given if given is not None else uuid.uuid4().hex
        if not _REQUEST_ID.fullmatch(rid):
            rid = uuid.uuid4().hex
            error = InvalidRequestError(
                "X-Request-Id must be 1 to 128 characters of A-Z a-z 0-9 . _ : / + = @ -",
                param="x-request-id",
                code="invalid_request_id",
            )
            await self._send_with_id(json_error(error), rid, scope, receive, send)
            return
        scope.setdefault("state", {})["request_id"] = rid
        token = REQUEST_ID.set(rid)
        try:
            await self._send_with_id(self.app, rid, scope, receive, send)
        finally:
            REQUEST_ID.reset(token)

    async def _send_with_id(self, app: ASGIApp, rid: str, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.set_header:
            await app(scope, receive, send)
            return

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        await app(scope, receive, with_id)
