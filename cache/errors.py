"""Errors of the cache package."""

from __future__ import annotations

from core.errors import RagyardError


class CacheError(RagyardError):
    """Root of the cache package's errors (under the project's root, `core.errors.RagyardError`)."""


class UnknownBackendError(CacheError):
    """No cache backend is registered for that URL scheme."""


class BackendUnavailableError(CacheError):
    """The backend could not be reached or answered with an error."""
