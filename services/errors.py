"""Errors of the serving layer. HTTP statuses are attached only here, at the gateway's edge."""

from __future__ import annotations

from core.errors import ConfigError, RagyardError

__all__ = [
    "ConfigError",
    "RagyardError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "NotReadyError",
    "PermissionDeniedError",
    "AuthenticationError",
    "RateLimitError",
    "QuotaExceededError",
    "ServiceUnavailableError",
]


class InvalidRequestError(RagyardError):
    """The client sent something the service cannot accept."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class NotFoundError(InvalidRequestError):
    """The client named something that does not exist (a model, a route)."""

    status_code = 404
    code = "not_found"


class PayloadTooLargeError(InvalidRequestError):
    """The request body is larger than the configured limit."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(InvalidRequestError):
    """The document type is not one Ragyard can ingest."""

    status_code = 415
    code = "unsupported_media_type"


class NotReadyError(RagyardError):
    """A component is still loading."""

    status_code = 503
    error_type = "service_unavailable"
    code = "not_ready"


class PermissionDeniedError(InvalidRequestError):
    """The client may not ask for this (an SLA override above its tier)."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class AuthenticationError(InvalidRequestError):
    """No valid API key for a route that needs one."""

    status_code = 401
    code = "invalid_api_key"


class RateLimitError(InvalidRequestError):
    """Shed under overload; `retry_after` says when to come back."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retry_after: int | None = None


class QuotaExceededError(RateLimitError):
    """The tenant's budget for the period is spent."""

    error_type = "insufficient_quota"
    code = "insufficient_quota"


class ServiceUnavailableError(RagyardError):
    """A store or replica the request needs cannot be reached; `retry_after` says when to try again."""

    status_code = 503
    error_type = "service_unavailable"
    code = "service_unavailable"
    retry_after: int | None = None
