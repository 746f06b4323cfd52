"""The SLA policy's schema: named tiers (latency and TTFT targets, cost caps, a quality floor, a priority),
tenants (API keys, stored as digests, mapped to a tier and a budget per period), a price table and the
controller's settings; validated with pydantic when a policy is parsed or its YAML file loaded."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from retrieval.documents import SHARED_NAMESPACE
from retrieval.policies.registry import available_policies, choosable_policies
from router.errors import SlaPolicyError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    prompt_per_1m: float = Field(0.0, ge=0, description="Money per million prompt tokens.")
    completion_per_1m: float = Field(0.0, ge=0, description="Money per million completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_1m + completion_tokens * self.completion_per_1m) / 1e6


class QualityFloor(_Strict):
    min_policy: str = Field(
        "none",
        description="Least retrieval a plan may do, by the policies' rank (none < single = dragin < multi): "
        "every policy ranked at least as this one is admitted.",
    )
    models: list[str] | None = Field(None, description="Models a plan may use; None = all.")

    @field_validator("min_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in available_policies():
            raise ValueError(f"{value!r} is not a policy ({', '.join(available_policies())})")
        return value


class TierPolicy(_Strict):
    priority: int = Field(ge=0, le=100, description="Higher is served first; lower tiers degrade and shed first.")
    latency_ms: int = Field(gt=0, description="End-to-end latency target (p95), milliseconds.")
    ttft_ms: int | None = Field(None, gt=0, description="Time-to-first-token target, milliseconds.")
    max_tokens_per_request: int | None = Field(
        None, gt=0, description="Cost cap: tokens one request may reserve (its worst case)."
    )
    max_cost_per_request: float | None = Field(None, gt=0, description="Cost cap in money (needs `prices`).")
    quality_floor: QualityFloor = Field(default_factory=QualityFloor)
    quality_per_second: float | None = Field(
        None,
        ge=0,
        description="Expected F1 a slower plan must add per extra second of predicted latency to be chosen over a "
        "faster one (0 = the best expected quality whatever it takes within the target); None = "
        "router.quality_per_second.",
    )

    @model_validator(mode="after")
    def _ttft(self) -> TierPolicy:
        if self.ttft_ms is not None and self.ttft_ms > self.latency_ms:
            raise ValueError("ttft_ms must not exceed latency_ms")
        return self


class Budget(_Strict):
    period: Literal["day", "month"] = Field("day", description="Budgets reset at the start of each UTC period.")
    tokens: int | None = Field(None, gt=0, description="Tokens per period.")
    cost: float | None = Field(None, gt=0, description="Money per period (needs `prices`).")

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.tokens is None and self.cost is None:
            raise ValueError("a budget needs `tokens`, `cost` or both")
        return self


KEY_HASH_PREFIX = "sha256:"


def hash_api_key(key: str) -> str:
    """The form a key may take in a policy file that must not hold it in clear (a Kubernetes ConfigMap)."""
    return KEY_HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


class RateLimits(_Strict):
    rpm: int | None = Field(None, gt=0, description="Requests per minute (every /v1 call).")
    tpm: int | None = Field(None, gt=0, description="Tokens per minute the model runs for this tenant's answers.")
    max_concurrent: int | None = Field(None, gt=0, description="Answers in progress at once (chat, qa).")


def stored_digest(key: str) -> str:
    """The digest a configured key is matched by: the key's SHA-256, or the key itself when it is stored as
    one (``sha256:<hex>``)."""
    return key if key.startswith(KEY_HASH_PREFIX) else hash_api_key(key)


class Tenant(_Strict):
    api_keys: list[str] = Field(
        min_length=1,
        description="Bearer keys that identify this tenant, in clear or as `sha256:<64 hex digits>` of the key.",
    )
    tier: str = Field(description="The tier this tenant's requests get by default.")
    allowed_tiers: list[str] | None = Field(
        None, description="Tiers `x-sla-tier` may pick; None = the tenant's tier and every tier of lower priority."
    )
    budget: Budget | None = Field(None, description="Spending limit per period; None = unlimited.")
    limits: RateLimits | None = Field(None, description="Per-minute rate limits and a concurrency cap; None = none.")

    @field_validator("api_keys")
    @classmethod
    def _key_forms(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not key.strip():
                raise ValueError("an API key must not be empty")
            if key.startswith(KEY_HASH_PREFIX) and not re.fullmatch(r"[0-9a-f]{64}", key[len(KEY_HASH_PREFIX) :]):
                raise ValueError("a hashed API key is `sha256:` and 64 lowercase hex digits")
        return keys


class ControllerSettings(_Strict):
    window: int = Field(512, ge=16, description="Observations per plan the latency sketches remember.")
    min_observations: int = Field(3, ge=1, description="Observations before a plan's own figures replace the prior.")
    headroom: float = Field(
        0.85, gt=0, le=1, description="Share of a higher tier's target a lower tier's admission may leave it."
    )
    max_retry_after_s: int = Field(60, ge=1, description="Largest Retry-After sent with a shed request.")
    ticket_lease_s: float = Field(
        900.0,
        gt=0,
        description="How long a budget reservation waits for its request's report before any router releases "
        "it uncharged (a gateway or router that died); longer than any request.",
    )


class SlaPolicy(_Strict):
    """The whole policy file."""

    default_tier: str = Field("standard", description="Tier of requests from no known tenant.")
    tiers: dict[str, TierPolicy] = Field(min_length=1)
    tenants: dict[str, Tenant] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=dict, description="Per model id; a model not listed costs 0.")
    cache_charge: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of a cached answer's original tokens (and their price) charged when it is served again.",
    )
    quality: dict[str, dict[str, float]] | None = Field(
        None,
        description="Expected F1 per policy and query class (A, B, C); None = measured on the router's "
        "training labels.",
    )
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    _by_digest: dict[str, str] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _references(self) -> SlaPolicy:
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier!r} is not a tier ({', '.join(self.tiers)})")
        seen: dict[str, str] = {}
        if SHARED_NAMESPACE in self.tenants:
            raise ValueError(f"tenants.{SHARED_NAMESPACE}: the name is the operators' document namespace; pick another")
        for name, tenant in self.tenants.items():
            for tier in [tenant.tier, *(tenant.allowed_tiers or [])]:
                if tier not in self.tiers:
                    raise ValueError(f"tenants.{name}: tier {tier!r} does not exist ({', '.join(self.tiers)})")
            for key in tenant.api_keys:
                digest = stored_digest(key)
                if digest in seen:
                    raise ValueError(f"tenants.{name}: an API key is also tenant {seen[digest]!r}'s")
                seen[digest] = name
            if tenant.budget is not None and tenant.budget.cost is not None and not self.prices:
                raise ValueError(f"tenants.{name}.budget.cost needs a `prices` table")
        for tier_name, tier_policy in self.tiers.items():
            if tier_policy.max_cost_per_request is not None and not self.prices:
                raise ValueError(f"tiers.{tier_name}.max_cost_per_request needs a `prices` table")
        if self.quality is not None:
            for policy, by_class in self.quality.items():
                if policy not in choosable_policies():
                    raise ValueError(f"quality.{policy}: not a policy ({', '.join(choosable_policies())})")
                for cls, value in by_class.items():
                    if cls not in ("A", "B", "C") or not 0 <= value <= 1:
                        raise ValueError(f"quality.{policy}.{cls}: classes are A, B, C and values lie in [0, 1]")
        return self

    def tenant_for_key(self, key: str | None) -> str | None:
        """The tenant a bearer key belongs to, matched by its SHA-256 (a key stored in clear is hashed too)."""
        return self.tenant_for_digest(hash_api_key(key)) if key else None

    def tenant_for_digest(self, digest: str) -> str | None:
        # A dict lookup of the key's digest: the time it takes says nothing about the key. A stored digest
        # is matched by the key it hashes, never by itself: reading the policy (a ConfigMap) is not enough.
        if self._by_digest is None:
            self._by_digest = {stored_digest(k): name for name, tenant in self.tenants.items() for k in tenant.api_keys}
        return self._by_digest.get(digest)

    def price(self, model: str) -> Price:
        return self.prices.get(model, Price())

    def public(self) -> dict[str, Any]:
        """The policy as `GET /v1/sla` shows it: API keys are never echoed."""
        out = self.model_dump(mode="json")
        for tenant in out["tenants"].values():
            tenant["api_keys"] = f"{len(tenant['api_keys'])} key(s)"
        return out


DEFAULT_POLICY: dict[str, Any] = {
    "default_tier": "standard",
    "tiers": {
        "interactive": {"priority": 3, "latency_ms": 8000, "ttft_ms": 3000},
        "standard": {"priority": 2, "latency_ms": 20000, "ttft_ms": 8000},
        "batch": {"priority": 1, "latency_ms": 120000},
    },
}


def parse_policy(data: Any, *, source: str = "policy", models: list[str] | None = None) -> SlaPolicy:
    """Validate a policy; `SlaPolicyError` names every failing path."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SlaPolicyError(f"{source}: the SLA policy must be a mapping at the top level")
    try:
        policy = SlaPolicy.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise SlaPolicyError(f"{source}: invalid SLA policy: {problems}") from exc
    if models is not None:
        unknown = sorted(
            {m for m in policy.prices if m not in models}
            | {m for t in policy.tiers.values() for m in (t.quality_floor.models or []) if m not in models}
        )
        if unknown:
            raise SlaPolicyError(f"{source}: invalid SLA policy: unknown model(s) {unknown}; configured: {models}")
    return policy


def load_policy_file(path: str | Path, *, models: list[str] | None = None) -> SlaPolicy:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SlaPolicyError(f"SLA policy file {p} does not exist") from exc
    except yaml.YAMLError as exc:
        raise SlaPolicyError(f"SLA policy file {p} is not valid YAML: {exc}") from exc
    return parse_policy(data, source=str(p), models=models)
