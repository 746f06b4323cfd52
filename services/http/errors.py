"""Every error leaves the HTTP edge in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
with the status that fits: a client's mistake is a 4xx, never a 500.

Lower layers raise their own errors (they know nothing of HTTP); ``CONVERSIONS`` is the one table that
says what each becomes here. A new error class of a lower layer is one row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cache.errors import BackendUnavailableError, CacheError
from retrieval.errors import (
    AmbiguousDocumentError,
    CorpusBusyError,
    CorpusLogUnavailableError,
    DocumentFormatError,
    DocumentNotFoundError,
    DocumentOwnershipError,
    GenerationAheadError,
    GenerationLagError,
    IndexWriteError,
    OutputFormatError,
    RetrievalError,
    UnknownPolicyError,
    UnsupportedDocumentTypeError,
)
from router.errors import (
    BudgetExhaustedError,
    OverloadedError,
    PlanUnavailableError,
    RouterError,
    SlaHeaderError,
    SlaOverrideError,
    SlaRequestError,
    UnknownModelError,
)
from services.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RagyardError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)

logger = logging.getLogger(__name__)


def error_body(message: str, err_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def _retrying(cls: type[RateLimitError]) -> Callable[[Any], RagyardError]:
    def convert(exc: Any) -> RagyardError:
        out = cls(exc.message)
        out.retry_after = exc.retry_after
        return out

    return convert


# (error of a lower layer, what it becomes at the edge). The first row whose class matches wins, so a
# subclass comes before its base.
CONVERSIONS: tuple[tuple[type[Exception], Callable[[Any], RagyardError]], ...] = (
    (UnknownModelError, lambda e: NotFoundError(str(e), param="model", code="model_not_found")),
    (UnknownPolicyError, lambda e: InvalidRequestError(str(e), param="policy", code="unknown_policy")),
    (
        UnsupportedDocumentTypeError,
        lambda e: UnsupportedMediaTypeError(str(e), param="type", code="unsupported_document_type"),
    ),
    (DocumentFormatError, lambda e: InvalidRequestError(str(e), param="documents", code="invalid_document")),
    (OutputFormatError, lambda e: RagyardError(str(e), param="response_format", code="response_format_not_met")),
    (DocumentOwnershipError, lambda e: PermissionDeniedError(str(e), param="id", code="document_not_yours")),
    (AmbiguousDocumentError, lambda e: InvalidRequestError(str(e), param="namespace", code="ambiguous_document_id")),
    (DocumentNotFoundError, lambda e: NotFoundError(str(e), param="id", code="document_not_found")),
    (
        SlaOverrideError,
        lambda e: PermissionDeniedError(e.message, param=e.param, code="sla_override_not_allowed"),
    ),
    (SlaHeaderError, lambda e: InvalidRequestError(e.message, param=e.param, code="invalid_sla_header")),
    (PlanUnavailableError, lambda e: InvalidRequestError(e.message, param=e.param, code="no_plan_fits")),
    (BudgetExhaustedError, _retrying(QuotaExceededError)),
    (OverloadedError, _retrying(RateLimitError)),
    (SlaRequestError, lambda e: InvalidRequestError(e.message, param=e.param)),
    (BackendUnavailableError, lambda e: ServiceUnavailableError(str(e), code="budget_store_unavailable")),
    (IndexWriteError, lambda e: ServiceUnavailableError(str(e), code="index_write_failed")),
    (
        GenerationAheadError,
        lambda e: InvalidRequestError(str(e), param="x-ragyard-min-generation", code="invalid_min_generation"),
    ),
    (GenerationLagError, lambda e: _unavailable(str(e), code="corpus_behind")),
    (CorpusLogUnavailableError, lambda e: _unavailable(str(e), code="corpus_store_unavailable")),
    (CorpusBusyError, lambda e: _unavailable(str(e), code="corpus_busy")),
    # A replica that died or is restarting, or a deployment whose queue is full: come back in a second.
    (ActorUnavailableError, lambda e: _unavailable("a replica this request needed is unavailable")),
    (RayActorError, lambda e: _unavailable("a replica this request needed is gone or restarting")),
    (ReplicaUnavailableError, lambda e: _unavailable("a replica this request needed is unavailable")),
    (DeploymentUnavailableError, lambda e: _unavailable("a deployment this request needed is unavailable")),
    (BackPressureError, lambda e: _unavailable("the service is at its queue limit", code="overloaded")),
)


def _unavailable(message: str, code: str = "replica_unavailable") -> RagyardError:
    out = ServiceUnavailableError(message + "; retry shortly", code=code)
    out.retry_after = 1
    return out


def to_ragyard(exc: BaseException) -> RagyardError:
    """The edge's error for any exception (unwrapping errors that crossed a Ray actor); anything not in
    the table is the service's fault, a 500 that says no more than that."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return to_ragyard(cause)
    for cls, convert in CONVERSIONS:
        if isinstance(exc, cls):
            return convert(exc)
    # The edge's own errors say their status; a lower layer's error the table does not convert is, like any
    # other exception, the service's fault.
    if isinstance(exc, RagyardError) and not isinstance(exc, LOWER_ROOTS) and hasattr(exc, "message"):
        return exc
    return RagyardError("internal error; the server log has the details", code="internal_error")


# The lower layers' error roots: they know nothing of HTTP, so only the table above gives them a status.
LOWER_ROOTS: tuple[type[Exception], ...] = (CacheError, RetrievalError, RouterError)


def json_error(exc: RagyardError) -> JSONResponse:
    retry = getattr(exc, "retry_after", None)
    return JSONResponse(
        error_body(exc.message, exc.error_type, exc.param, exc.code),
        status_code=exc.status_code,
        headers={"Retry-After": str(retry)} if retry else None,
    )


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        message = "the request body is not valid JSON: " + str(first.get("ctx", {}).get("error", ""))
        return JSONResponse(error_body(message, "invalid_request_error", None, "invalid_json"), status_code=400)
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        msg = "field required"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    text = f"{param}: {msg}{more}" if param else f"{msg}{more}"
    # A field Ragyard knows and does not implement says so in its code (services/http/schemas.py: UNSUPPORTED).
    code = "unsupported_parameter" if first.get("type") == "unsupported_parameter" else "invalid_request"
    return JSONResponse(error_body(text, "invalid_request_error", param, code), status_code=400)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    err_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse(
        error_body(message, err_type, None, None), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _any(request: Request, exc: Exception) -> JSONResponse:
    converted = to_ragyard(exc)
    if converted.status_code >= 500:
        logger.exception("request %s %s failed", request.method, request.url.path, exc_info=exc)
    return json_error(converted)


def install(app: FastAPI) -> None:
    """The handlers: validation errors, Starlette's own (404, 405), and every other exception. The
    table's classes get handlers of their own, so Starlette never treats them as 500s."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _any)
    classes: list[type[Exception]] = [RagyardError, *(cls for cls, _ in CONVERSIONS)]
    for cls in classes:
        app.add_exception_handler(cls, _any)
