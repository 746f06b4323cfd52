"""Errors of the router package."""

from __future__ import annotations

from typing import Any

from core.errors import RagyardError


class RouterError(RagyardError):
    """Root of the router package's errors (under the project's root, `core.errors.RagyardError`)."""


class UnknownModelError(RouterError):
    """The request names a model the service does not run."""


class RouterArtifactError(RouterError):
    """The trained classifier artifact is missing, corrupt or does not fit the embedder."""


class SlaPolicyError(RouterError):
    """The SLA policy file is missing or does not validate."""


class SlaRequestError(RouterError):
    """A request the SLA controller refuses. Carries the header or field at fault and, for the
    429s, how many seconds to wait. Picklable with its fields (it crosses Ray actor boundaries)."""

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.param, self.retry_after))


def _rebuild(cls: type[SlaRequestError], message: str, param: str | None, retry_after: int | None) -> SlaRequestError:
    return cls(message, param=param, retry_after=retry_after)


class SlaHeaderError(SlaRequestError):
    """An SLA header is malformed or names an unknown tier (400)."""


class SlaOverrideError(SlaRequestError):
    """An SLA header would loosen what the tenant's tier allows (403)."""


class PlanUnavailableError(SlaRequestError):
    """No plan fits the request's own caps, whatever the load (400)."""


class OverloadedError(SlaRequestError):
    """Shed: the predicted queue wait breaks the request's SLO under every allowed plan (429)."""


class BudgetExhaustedError(SlaRequestError):
    """The tenant's budget for this period cannot cover any allowed plan (429)."""
