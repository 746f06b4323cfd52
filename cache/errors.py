"""Errors of the cache package."""

from __future__ import annotations


class CacheError(Exception):
    """Root of the cache package's errors."""


class UnknownBackendError(CacheError):
    """No cache backend is registered for that URL scheme."""


class BackendUnavailableError(CacheError):
    """The backend could not be reached or answered with an error."""
