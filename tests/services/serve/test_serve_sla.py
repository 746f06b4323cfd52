"""The SLA controller on a real local Ray Serve (loopback, project temp dir): a tenant's answer is planned
by the router deployment, its typed outcome crosses back to it and settles the budget; an override above
the tenant's tier comes back through the handles as a 403; /readyz shows the policy and the latency
priors in force. SmolLM2 alone (test_serve_e2e serves the ladder)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import start_serve

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.e2e, pytest.mark.model]

POLICY: dict[str, Any] = {
    "default_tier": "standard",
    "tiers": {
        "interactive": {"priority": 3, "latency_ms": 120000},
        "standard": {"priority": 2, "latency_ms": 300000},
    },
    "tenants": {"acme": {"api_keys": ["k-acme"], "tier": "standard", "budget": {"tokens": 50_000}}},
}


@pytest.fixture(scope="module")
def served(base_config: dict[str, Any], session_tmp: Path) -> Iterator[str]:
    from services.serve import local as serving

    policy = session_tmp / "serve-sla.yaml"
    policy.write_text(yaml.safe_dump(POLICY), encoding="utf-8")
    config = {
        **base_config,
        "index": {"dir": str(session_tmp / "serve-sla-index")},
        "sla": {"enabled": True, "policy_path": str(policy)},
        "server": {"api_keys": ["op-key"]},
    }
    try:
        yield start_serve(config)
    finally:
        serving.stop()


def _auth(key: str = "k-acme") -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_an_answer_over_serve_is_planned_and_settled_by_the_router(served: str) -> None:
    assert httpx.get(f"{served}/readyz", timeout=30).json() == {"status": "ready"}  # details: operators only
    ready = httpx.get(f"{served}/readyz", headers=_auth("op-key"), timeout=30).json()
    sla = ready["router"]["sla"]
    assert sla["policy_version"] >= 1 and sla["latency_priors"] and sla["latency_priors_error"] is None
    body = {"question": "What does Ragyard decide per question?", "style": "short", "max_tokens": 8}
    rec = httpx.post(f"{served}/v1/qa", json=body, headers=_auth(), timeout=120).json()
    assert rec["sla"]["tenant"] == "acme" and rec["sla"]["tier"] == "standard", rec
    used = rec["usage"]["total_tokens"]
    after = rec["sla"]["budget_after"]
    assert (after["spent_tokens"], after["reserved_tokens"]) == (used, 0)
    status = httpx.get(f"{served}/v1/sla", headers=_auth(), timeout=30).json()
    usage = status["tenants"]["acme"]["usage"]
    assert usage["spent_tokens"] == used and usage["reserved_tokens"] == 0


def test_errors_raised_in_the_router_replica_keep_their_status(served: str) -> None:
    body = {"question": "Hi?", "max_tokens": 4}
    resp = httpx.post(f"{served}/v1/qa", json=body, headers={**_auth(), "x-sla-tier": "interactive"}, timeout=60)
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "sla_override_not_allowed"
    resp = httpx.post(f"{served}/v1/qa", json=body, headers={**_auth(), "x-slo-latency-ms": "soon"}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_sla_header"
    assert httpx.post(f"{served}/v1/qa", json=body, timeout=60).status_code == 401  # tenants: keys required
