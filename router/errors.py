"""Errors of the router package."""

from __future__ import annotations


class RouterError(Exception):
    """Root of the router package's errors."""


class UnknownModelError(RouterError):
    """The request names a model the service does not run."""


class RouterArtifactError(RouterError):
    """The trained classifier artifact is missing, corrupt or does not fit the embedder."""
