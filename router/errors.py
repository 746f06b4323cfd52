"""Errors of the router package."""

from __future__ import annotations


class RouterError(Exception):
    """Root of the router package's errors."""


class UnknownModelError(RouterError):
    """The request names a model the service does not run."""
