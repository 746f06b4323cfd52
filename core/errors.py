"""The root of every error Ragyard raises on purpose, and the configuration error, which every layer may
raise. Statuses are the HTTP edge's business (``services.errors`` holds the request errors); the root
carries the defaults the edge falls back on."""

from __future__ import annotations


class RagyardError(Exception):
    """Root of every error Ragyard raises on purpose."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    # Errors cross Ray actor boundaries: keep them picklable with their keyword fields.
    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.param, self.code))


def _rebuild(cls: type[RagyardError], message: str, param: str | None, code: str | None) -> RagyardError:
    return cls(message, param=param, code=code)


class ConfigError(RagyardError):
    """The configuration is invalid."""

    code = "invalid_config"


class StoreUnavailableError(RagyardError):
    """A shared store (Redis) did not answer in time, or its circuit breaker is open."""

    status_code = 503
    error_type = "service_unavailable"
    code = "store_unavailable"
