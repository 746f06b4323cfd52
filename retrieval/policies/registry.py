"""Retrieval policies by name, loaded lazily from "module:Class" strings."""

from __future__ import annotations

import importlib

from retrieval.errors import UnknownPolicyError
from retrieval.policies.base import RetrievalPolicy

POLICIES: dict[str, str] = {
    "adaptive": "retrieval.policies.adaptive:AdaptivePolicy",
    "dragin": "retrieval.policies.dragin:DraginPolicy",
    "multi": "retrieval.policies.multi_step:MultiStepPolicy",
    "none": "retrieval.policies.no_retrieval:NoRetrievalPolicy",
    "single": "retrieval.policies.single_step:SingleStepPolicy",
}


def available_policies() -> list[str]:
    return sorted(POLICIES)


def get_policy(name: str) -> RetrievalPolicy:
    try:
        target = POLICIES[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown retrieval policy {name!r}; valid: {', '.join(available_policies())}"
        ) from None
    module, _, attr = target.partition(":")
    policy: RetrievalPolicy = getattr(importlib.import_module(module), attr)()
    return policy
