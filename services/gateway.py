"""The HTTP edge: OpenAI-compatible chat completions, /v1/qa, /v1/documents, health and metrics.

Every error leaves here in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
with the status that fits: a client's mistake is a 4xx, never a 500.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cache.errors import BackendUnavailableError
from retrieval.errors import DocumentFormatError, UnknownPolicyError, UnsupportedDocumentTypeError
from retrieval.generation import ChatMessage
from retrieval.ingest import parse, type_for_media
from retrieval.policies.base import Question
from router.errors import (
    BudgetExhaustedError,
    OverloadedError,
    PlanUnavailableError,
    SlaHeaderError,
    SlaOverrideError,
    SlaRequestError,
    UnknownModelError,
)
from router.router import AUTO_MODEL
from router.sla import HEADERS as SLA_HEADERS
from router.sla import PolicyStore
from services import metrics
from services.errors import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    RagyardError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from services.rag import AnswerRequest, RagService
from services.schemas import ChatCompletionRequest, DocumentsRequest, QARequest

logger = logging.getLogger(__name__)


def error_body(message: str, err_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _as_ragyard(exc: BaseException) -> RagyardError:
    """Convert other packages' errors at the boundary (unwrapping errors that crossed a Ray actor)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return _as_ragyard(cause)
    if isinstance(exc, RagyardError) and hasattr(exc, "message"):
        return exc
    if isinstance(exc, UnknownModelError):
        return NotFoundError(str(exc), param="model", code="model_not_found")
    if isinstance(exc, UnknownPolicyError):
        return InvalidRequestError(str(exc), param="policy", code="unknown_policy")
    if isinstance(exc, UnsupportedDocumentTypeError):
        return UnsupportedMediaTypeError(str(exc), param="type", code="unsupported_document_type")
    if isinstance(exc, DocumentFormatError):
        return InvalidRequestError(str(exc), param="documents", code="invalid_document")
    if isinstance(exc, SlaRequestError):
        return _sla_error(exc)
    if isinstance(exc, BackendUnavailableError):
        return ServiceUnavailableError(str(exc), code="budget_store_unavailable")
    return RagyardError("internal error; the server log has the details", code="internal_error")


def _sla_error(exc: SlaRequestError) -> RagyardError:
    out: RagyardError
    if isinstance(exc, SlaOverrideError):
        out = PermissionDeniedError(exc.message, param=exc.param, code="sla_override_not_allowed")
    elif isinstance(exc, SlaHeaderError):
        out = InvalidRequestError(exc.message, param=exc.param, code="invalid_sla_header")
    elif isinstance(exc, PlanUnavailableError):
        out = InvalidRequestError(exc.message, param=exc.param, code="no_plan_fits")
    elif isinstance(exc, BudgetExhaustedError):
        out = QuotaExceededError(exc.message)
        out.retry_after = exc.retry_after
    elif isinstance(exc, OverloadedError):
        out = RateLimitError(exc.message)
        out.retry_after = exc.retry_after
    else:
        out = InvalidRequestError(exc.message, param=exc.param)
    return out


def _json_error(exc: RagyardError) -> JSONResponse:
    retry = getattr(exc, "retry_after", None)
    return JSONResponse(
        error_body(exc.message, exc.error_type, exc.param, exc.code),
        status_code=exc.status_code,
        headers={"Retry-After": str(retry)} if retry else None,
    )


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
            await _json_error(too_big)(scope, receive, send)
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


def create_app(
    service_or_factory: RagService | Callable[[], Awaitable[RagService]],
    *,
    max_body_bytes: int = 1 << 20,
    api_keys: list[str] | None = None,
    sla_policy: PolicyStore | None = None,
) -> FastAPI:
    """The FastAPI app over a RagService (or a coroutine that builds one, awaited on first use).

    ``sla_policy``: the SLA policy store (when the controller is on); its tenants' API keys are
    accepted besides ``api_keys``, and each request is tagged with its tenant."""
    app = FastAPI(title="Ragyard", version="0.1.0", docs_url="/docs", redoc_url=None)
    state: dict[str, RagService] = {}
    keys = set(api_keys or [])
    if sla_policy is None and isinstance(service_or_factory, RagService) and service_or_factory.config.sla.enabled:
        cfg = service_or_factory.config
        sla_policy = PolicyStore(
            cfg.sla.policy_path, reload_interval_s=cfg.sla.reload_interval_s, models=[m.id for m in cfg.models]
        )

    async def svc() -> RagService:
        if "svc" not in state:
            if isinstance(service_or_factory, RagService):
                state["svc"] = service_or_factory
            else:
                state["svc"] = await service_or_factory()
        return state["svc"]

    # -- errors --------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(
                error_body(
                    "the request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")),
                    "invalid_request_error",
                    None,
                    "invalid_json",
                ),
                status_code=400,
            )
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "missing":
            msg = "field required"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        text = f"{param}: {msg}{more}" if param else f"{msg}{more}"
        return JSONResponse(error_body(text, "invalid_request_error", param, "invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        err_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(message, err_type, None, None),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        converted = _as_ragyard(exc)
        if converted.status_code >= 500:
            logger.exception("request %s %s failed", request.method, request.url.path, exc_info=exc)
        return _json_error(converted)

    # Other packages' errors have handlers of their own class so Starlette never treats them as 500s.
    for cls in (
        RagyardError,
        UnknownModelError,
        UnknownPolicyError,
        DocumentFormatError,
        UnsupportedDocumentTypeError,
        SlaRequestError,
        BackendUnavailableError,
    ):
        app.add_exception_handler(cls, _any)

    # -- middleware ----------------------------------------------------------------------------
    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        route = request.url.path if request.url.path in _KNOWN_ROUTES else "other"
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        policy = sla_policy.policy if sla_policy is not None else None
        request.state.tenant = policy.tenant_for_key(token) if policy is not None else None
        required = bool(keys) or (policy is not None and bool(policy.tenants))
        if required and request.url.path.startswith("/v1/"):
            if token not in keys and request.state.tenant is None:
                resp: Response = JSONResponse(
                    error_body(
                        "a valid API key is required: Authorization: Bearer <key>",
                        "invalid_request_error",
                        None,
                        "invalid_api_key",
                    ),
                    status_code=401,
                )
                _count_http(route, request.method, 401, start)
                return resp
        try:
            resp = await call_next(request)
        except PayloadTooLargeError as exc:
            resp = _json_error(exc)
        _count_http(route, request.method, resp.status_code, start)
        return resp

    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)

    # -- routes --------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            detail = await (await svc()).readiness()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", and says why
            logger.info("not ready: %s", exc)
            return JSONResponse({"status": "not ready", "reason": str(exc) or type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready", **detail})

    @app.get("/metrics")
    async def prometheus() -> Response:
        body = generate_latest()
        service = await svc()
        texts = []
        try:
            # Engines in other processes (Serve replicas running vLLM) report through their workers.
            texts += await service.worker_metrics()
        except Exception as exc:  # noqa: BLE001 - the gateway's own metrics are still worth serving
            logger.warning("worker metrics unavailable: %s", exc)
        try:
            # The SLA controller lives in the router (its own replica on Serve).
            texts.append(await service.router_metrics())
        except Exception as exc:  # noqa: BLE001 - as above
            logger.warning("router metrics unavailable: %s", exc)
        body += metrics.merge_exposition(texts)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/sla")
    async def sla(request: Request) -> dict[str, Any]:
        # A tenant sees its own budget; an operator key (server.api_keys) or an open server sees all.
        return {"object": "sla.status", **await (await svc()).sla(getattr(request.state, "tenant", None))}

    def sla_context(request: Request) -> dict[str, Any] | None:
        if sla_policy is None:
            return None
        headers = {h: request.headers[h] for h in SLA_HEADERS if h in request.headers}
        return {"tenant": getattr(request.state, "tenant", None), "headers": headers}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        service = await svc()
        created = int(time.time())
        data = [
            {
                "id": AUTO_MODEL,
                "object": "model",
                "created": created,
                "owned_by": "ragyard",
                "description": "the router picks the model and the retrieval policy",
            }
        ]
        data += [
            {"id": m.id, "object": "model", "created": created, "owned_by": "ragyard"} for m in service.config.models
        ]
        return {"object": "list", "data": data}

    def qa_request(body: QARequest, request: Request) -> AnswerRequest:
        return AnswerRequest(
            question=Question(text=body.question, style=body.style),
            model=body.model,
            policy=body.policy,
            top_k=body.top_k,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            sla=sla_context(request),
        )

    @app.post("/v1/qa")
    async def qa(body: QARequest, request: Request) -> dict[str, Any]:
        return await (await svc()).answer(qa_request(body, request))

    @app.post("/v1/plan")
    async def plan(body: QARequest, request: Request) -> dict[str, Any]:
        # What /v1/qa would run for the same body and headers, without generating (like EXPLAIN).
        return await (await svc()).plan(qa_request(body, request))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        service = await svc()
        req = _chat_to_answer(body)
        req.sla = sla_context(request)
        created = int(time.time())
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        if not body.stream:
            record = await service.answer(req)
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": record["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": record["answer"]},
                            "finish_reason": record["finish_reason"],
                            "logprobs": None,
                        }
                    ],
                    "usage": record["usage"],
                    "ragyard": _extension(record),
                }
            )
        # Plan (and fail on a bad model or limit) before the 200 and the first byte go out.
        decided = await service.decide(req)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(service, req, decided, cid, created, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/documents")
    async def documents(request: Request) -> dict[str, Any]:
        service = await svc()
        media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        raw = await request.body()
        if media == "application/json":
            try:
                payload = json.loads(raw or b"null")
            except ValueError as exc:
                raise InvalidRequestError(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
            try:
                parsed = DocumentsRequest.model_validate(payload)
            except Exception as exc:
                raise RequestValidationError(getattr(exc, "errors", lambda: [])()) from exc
            docs = []
            for n, d in enumerate(parsed.documents):
                try:
                    docs += parse(d.text, d.type, title=d.title, doc_id=d.id, metadata=d.metadata, source="api")
                except (DocumentFormatError, UnsupportedDocumentTypeError) as exc:
                    raise type(exc)(f"documents[{n}]: {exc}") from exc
        else:
            kind = type_for_media(media)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequestError("the document is not UTF-8 text", code="invalid_encoding") from exc
            docs = parse(
                text,
                kind,
                title=request.query_params.get("title", ""),
                doc_id=request.query_params.get("id", ""),
                source="api",
            )
        return {"object": "ingest.result", **await service.ingest(docs)}

    return app


_KNOWN_ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/models",
    "/v1/qa",
    "/v1/plan",
    "/v1/chat/completions",
    "/v1/documents",
    "/v1/sla",
}


def _count_http(route: str, method: str, status: int, start: float) -> None:
    metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc()
    metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - start)


def _chat_to_answer(body: ChatCompletionRequest) -> AnswerRequest:
    systems = [m.text() for m in body.messages if m.role in ("system", "developer") and m.text().strip()]
    history = [
        ChatMessage(role=m.role, content=m.text()) for m in body.messages[:-1] if m.role in ("user", "assistant")
    ]
    question = Question(
        text=body.messages[-1].text().strip(),
        history=history,
        system="\n".join(systems) or None,
        style=body.style,
    )
    return AnswerRequest(
        question=question,
        model=body.model,
        policy=body.policy,
        top_k=body.top_k,
        max_tokens=body.requested_max_tokens(),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_list(),
        seed=body.seed,
    )


def _extension(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("citations", "plan", "timings", "retrieval_steps", "cache", "sla") if k in record}


async def _sse(
    service: RagService,
    req: AnswerRequest,
    decided: tuple[Any, Any],
    cid: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    model = decided[0].plan.model

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        out = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        if include_usage:
            out["usage"] = None
        return out

    yield event(chunk({"role": "assistant", "content": ""}))
    try:
        async for ev in service.stream(req, decided):
            if not ev.done:
                yield event(chunk({"content": ev.text}))
                continue
            record = ev.record
            yield event(chunk({}, record["finish_reason"], ragyard=_extension(record)))
            if include_usage:
                yield event(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": record["usage"],
                    }
                )
    except Exception as exc:  # noqa: BLE001 - the status is sent; the error goes in the stream
        err = _as_ragyard(exc)
        if err.status_code >= 500:
            logger.exception("stream failed", exc_info=exc)
        yield event(error_body(err.message, err.error_type, err.param, err.code))
    yield b"data: [DONE]\n\n"
