"""Retrieval policies by name, loaded lazily from "module:Class" strings, and the facts the layers above
read from them (rank, whether `adaptive` may choose it, its label class, its model calls at most).

A new policy is one module with one class (``name``, ``rank``, ``choosable``, ``label_class``,
``max_llm_calls`` and ``prepare``: see ``RetrievalPolicy``), registered here or, from outside the repo,
by ``retrieval.plugins: {name: "module:Class"}`` in the config.
"""

from __future__ import annotations

import threading

from core.loading import LoadError, load_object
from retrieval.errors import UnknownPolicyError
from retrieval.policies.base import RetrievalPolicy

POLICIES: dict[str, str] = {
    "adaptive": "retrieval.policies.adaptive:AdaptivePolicy",
    "dragin": "retrieval.policies.dragin:DraginPolicy",
    "multi": "retrieval.policies.multi_step:MultiStepPolicy",
    "none": "retrieval.policies.no_retrieval:NoRetrievalPolicy",
    "single": "retrieval.policies.single_step:SingleStepPolicy",
}
ADAPTIVE = "adaptive"
LABEL_CLASSES = ("A", "B", "C")

_loaded: dict[str, RetrievalPolicy] = {}
_lock = threading.Lock()


def available_policies() -> list[str]:
    return sorted(POLICIES)


def _load(name: str, target: str) -> RetrievalPolicy:
    try:
        cls = load_object(target)
    except LoadError as exc:
        raise UnknownPolicyError(f"policy {name!r}: {exc}") from exc
    policy = cls()
    missing = [
        a for a in ("name", "rank", "choosable", "label_class", "max_llm_calls", "prepare") if not hasattr(policy, a)
    ]
    if missing:
        raise UnknownPolicyError(f"policy {name!r} ({target}) lacks {', '.join(missing)} (see RetrievalPolicy)")
    if policy.name != name:
        raise UnknownPolicyError(f"policy {target} is named {policy.name!r}, registered as {name!r}")
    if not isinstance(policy.rank, int) or policy.rank < 0:
        raise UnknownPolicyError(f"policy {name!r}: rank must be a non-negative integer")
    if policy.label_class is not None and policy.label_class not in LABEL_CLASSES:
        raise UnknownPolicyError(f"policy {name!r}: label_class must be one of {', '.join(LABEL_CLASSES)} or None")
    return policy


def get_policy(name: str) -> RetrievalPolicy:
    """The policy registered under ``name`` (one instance per process: policies hold no request state)."""
    policy = _loaded.get(name)
    if policy is not None:
        return policy
    try:
        target = POLICIES[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown retrieval policy {name!r}; valid: {', '.join(available_policies())}"
        ) from None
    with _lock:
        return _loaded.setdefault(name, _load(name, target))


def register_policy(name: str, target: str) -> None:
    """Register a plug-in policy by "module:Class" (loaded and checked now, so a bad one fails at start).
    Registering the same target again is a no-op; another target under a taken name is an error."""
    if POLICIES.get(name) == target:
        return
    if name in POLICIES:
        raise UnknownPolicyError(f"policy {name!r} is already registered as {POLICIES[name]}")
    policy = _load(name, target)
    with _lock:
        POLICIES[name] = target
        _loaded[name] = policy


def policy_rank(name: str) -> int:
    return get_policy(name).rank


def choosable_policies() -> list[str]:
    """The policies `adaptive` and the SLA controller may choose, least retrieval first."""
    return sorted((p for p in POLICIES if get_policy(p).choosable), key=lambda p: (policy_rank(p), p))


def label_ladder() -> list[tuple[str, str]]:
    """(policy, class) in the order labels try them: Adaptive-RAG's none → A, single → B, multi → C."""
    tried = [(p, get_policy(p).label_class) for p in POLICIES]
    ladder = sorted(((p, c) for p, c in tried if c is not None), key=lambda pc: (pc[1], policy_rank(pc[0]), pc[0]))
    return ladder
