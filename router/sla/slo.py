"""One request's SLO: the tenant's tier, then the request's header overrides, which can only tighten what
that tier allows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.errors import SlaHeaderError, SlaOverrideError
from router.sla.schema import QualityFloor, SlaPolicy

HEADERS = ("x-sla-tier", "x-slo-latency-ms", "x-slo-ttft-ms", "x-budget-tokens")


@dataclass(frozen=True)
class RequestSlo:
    """What one request is held to, after the tenant's tier and the header overrides."""

    tenant: str | None
    tier: str
    priority: int
    latency_ms: int
    ttft_ms: int | None
    max_tokens: int | None
    max_cost: float | None
    floor: QualityFloor
    overrides: dict[str, Any] = field(default_factory=dict)
    quality_per_second: float | None = None  # the tier's; None = router.quality_per_second

    def describe(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "tier": self.tier,
            "priority": self.priority,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "max_tokens_per_request": self.max_tokens,
            "max_cost_per_request": self.max_cost,
            **({"overrides": self.overrides} if self.overrides else {}),
        }


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError as exc:
        raise SlaHeaderError(f"header {name} must be a positive integer, got {raw!r}", param=name) from exc
    if value <= 0:
        raise SlaHeaderError(f"header {name} must be a positive integer, got {raw!r}", param=name)
    return value


def _tighter(a: float | None, b: float | None) -> float | None:
    """The smaller of two caps, None meaning no cap."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def resolve(policy: SlaPolicy, tenant: str | None, headers: Mapping[str, str]) -> RequestSlo:
    """The request's SLO: the tenant's tier (or `x-sla-tier`, if the tenant may use it), then each
    numeric override, which must not loosen the tier's value."""
    headers = {k.lower(): v for k, v in headers.items() if k.lower() in HEADERS}
    t = policy.tenants.get(tenant) if tenant else None
    own = t.tier if t else policy.default_tier
    tier_name = own
    overrides: dict[str, Any] = {}
    asked = headers.get("x-sla-tier", "").strip()
    if asked:
        if asked not in policy.tiers:
            raise SlaHeaderError(
                f"x-sla-tier {asked!r} is not a tier; tiers: {', '.join(policy.tiers)}", param="x-sla-tier"
            )
        allowed = (
            set(t.allowed_tiers)
            if t is not None and t.allowed_tiers is not None
            else {n for n, tp in policy.tiers.items() if tp.priority <= policy.tiers[own].priority}
        ) | {own}
        if asked not in allowed:
            raise SlaOverrideError(
                f"x-sla-tier {asked!r} is above what this tenant's tier {own!r} allows "
                f"(allowed: {', '.join(sorted(allowed))})",
                param="x-sla-tier",
            )
        tier_name = asked
        overrides["tier"] = asked
    tier = policy.tiers[tier_name]
    latency, ttft = tier.latency_ms, tier.ttft_ms
    # A tier picked by header brings its targets and priority, never a larger allowance: the request's
    # token and cost caps are the tighter of its own tier's and the picked one's.
    home = policy.tiers[own]
    tokens_cap = _tighter(tier.max_tokens_per_request, home.max_tokens_per_request)
    max_tokens = int(tokens_cap) if tokens_cap is not None else None
    max_cost = _tighter(tier.max_cost_per_request, home.max_cost_per_request)
    for name, current in (
        ("x-slo-latency-ms", latency),
        ("x-slo-ttft-ms", ttft if ttft is not None else latency),
        ("x-budget-tokens", max_tokens if max_tokens is not None else math.inf),
    ):
        raw = headers.get(name)
        if raw is None or not raw.strip():
            continue
        value = _positive_int(name, raw)
        if value > current:
            raise SlaOverrideError(
                f"{name} {value} would loosen tier {tier_name!r}'s limit of {current}; an override can only tighten",
                param=name,
            )
        overrides[name] = value
        if name == "x-slo-latency-ms":
            latency = value
        elif name == "x-slo-ttft-ms":
            ttft = value
        else:
            max_tokens = value
    if ttft is not None and ttft > latency:
        ttft = latency
    return RequestSlo(
        tenant=tenant,
        tier=tier_name,
        priority=tier.priority,
        latency_ms=latency,
        ttft_ms=ttft,
        max_tokens=max_tokens,
        max_cost=max_cost,
        floor=tier.quality_floor,
        overrides=overrides,
        quality_per_second=tier.quality_per_second,
    )
