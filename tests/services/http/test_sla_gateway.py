"""The SLA controller behind the HTTP edge: tenants by API key, header overrides, 429s with
Retry-After, budgets charged per answer, GET /v1/sla, hot reload, and the /metrics families.
Real model, real index, no Ray (the Serve path runs in the chaos suite, tests/reliability, and `ragyard bench sla`)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from services.config import load_config
from services.deployments.router import RouterService
from services.http.app import create_app
from services.pipeline import RagService
from services.pipeline.clients import local_router

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
POLICY: dict[str, Any] = {
    "default_tier": "standard",
    "tiers": {
        "interactive": {"priority": 3, "latency_ms": 60000, "ttft_ms": 30000},
        "standard": {"priority": 2, "latency_ms": 120000},
        "batch": {"priority": 1, "latency_ms": 600000},
    },
    "tenants": {
        "acme": {"api_keys": ["k-acme"], "tier": "interactive", "budget": {"tokens": 50_000}},
        "tiny": {"api_keys": ["k-tiny"], "tier": "batch", "budget": {"tokens": 2500}},
    },
}


@pytest.fixture()
def sla_env(local_service: Any, base_config: dict[str, Any], tmp_path: Path) -> Iterator[tuple[TestClient, Any, Path]]:
    path = tmp_path / "sla.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    config = load_config(
        {
            **base_config,
            "index": local_service.config.index.model_dump(),
            "sla": {"enabled": True, "policy_path": str(path), "reload_interval_s": 0.01},
            "server": {"api_keys": ["operator"]},
        }
    )
    router = RouterService(config)
    service = RagService(
        config, local_service.retriever, local_service.workers, router=local_router(router), cache=None
    )
    with TestClient(create_app(service, api_keys=config.server.api_keys)) as client:
        yield client, router.controller, path


def _qa(client: TestClient, key: str, **headers: str) -> Any:
    return client.post(
        "/v1/qa",
        json={"question": "What does Ragyard decide per question?", "style": "short", "max_tokens": 8},
        headers={"authorization": f"Bearer {key}", **headers},
    )


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    return err


def test_tenant_answer_is_planned_and_charged(sla_env: Any) -> None:
    client, ctl, _ = sla_env
    resp = _qa(client, "k-acme")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    sla = body["sla"]
    assert sla["tenant"] == "acme" and sla["tier"] == "interactive" and sla["latency_ms"] == 60000
    assert sla["candidates"] and "best expected quality" in sla["reason"]
    used = body["usage"]["total_tokens"]
    assert sla["budget_after"]["spent_tokens"] == used and sla["budget_after"]["reserved_tokens"] == 0
    assert asyncio.run(ctl.ledger.usage("acme", "day")).spent_tokens == used
    # Streaming: the budget settles when the stream ends.
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "Hi?"}], "max_tokens": 6, "stream": True},
        headers={"authorization": "Bearer k-acme"},
    ) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: {")]
    final = json.loads(lines[-1][6:])
    assert final["ragyard"]["sla"]["tier"] == "interactive"
    usage = asyncio.run(ctl.ledger.usage("acme", "day"))
    assert usage.reserved_tokens == 0 and usage.spent_tokens > used
    assert not ctl.load.jobs and not ctl._tickets


def test_header_errors_and_auth(sla_env: Any) -> None:
    client, ctl, _ = sla_env
    err = _error(_qa(client, "k-acme", **{"x-slo-latency-ms": "999999"}), 403, "sla_override_not_allowed")
    assert err["type"] == "permission_error" and err["param"] == "x-slo-latency-ms"
    _error(_qa(client, "k-tiny", **{"x-sla-tier": "interactive"}), 403, "sla_override_not_allowed")
    err = _error(_qa(client, "k-acme", **{"x-slo-ttft-ms": "soon"}), 400, "invalid_sla_header")
    assert err["param"] == "x-slo-ttft-ms"
    _error(_qa(client, "k-acme", **{"x-sla-tier": "platinum"}), 400, "invalid_sla_header")
    _error(_qa(client, "k-acme", **{"x-budget-tokens": "10"}), 400, "no_plan_fits")
    _error(_qa(client, "nobody"), 401, "invalid_api_key")
    assert not ctl._tickets  # refused requests hold nothing


def test_overload_sheds_with_retry_after(sla_env: Any) -> None:
    client, ctl, _ = sla_env
    for _ in range(40):  # a deep backlog: 40 interactive requests of ~20 s each in flight, served first
        ctl.load.admit(MODEL, 3, 20.0)
    try:
        resp = _qa(client, "k-tiny")
        err = _error(resp, 429, "rate_limit_exceeded")
        assert err["type"] == "rate_limit_error" and "overloaded" in err["message"]
        assert 1 <= int(resp.headers["retry-after"]) <= 60
        text = client.get("/metrics", headers={"authorization": "Bearer operator"}).text
        assert 'ragyard_sla_shed_total{reason="overload",tier="batch"}' in text
    finally:
        ctl.load.jobs.clear()
    # The budget: tiny (2,500 tokens) can reserve one worst case (2,048), not two.
    asyncio.run(ctl.ledger.reserve("held-by-test", "tiny", "day", 2048, 0, 2500, None, lease_s=600))
    resp = _qa(client, "k-tiny")
    err = _error(resp, 429, "insufficient_quota")
    assert err["type"] == "insufficient_quota" and int(resp.headers["retry-after"]) > 0


def test_sla_status_reload_and_metrics(sla_env: Any) -> None:
    client, ctl, path = sla_env
    assert _qa(client, "k-tiny").status_code == 200
    mine = client.get("/v1/sla", headers={"authorization": "Bearer k-tiny"}).json()
    assert mine["object"] == "sla.status" and mine["enabled"] and mine["caller"] == "tiny"
    assert set(mine["tenants"]) == {"tiny"} and set(mine["policy"]["tenants"]) == {"tiny"}
    assert "k-tiny" not in json.dumps(mine)  # keys are never echoed
    assert mine["tenants"]["tiny"]["remaining_tokens"] < 2500
    everything = client.get("/v1/sla", headers={"authorization": "Bearer operator"}).json()
    assert set(everything["tenants"]) == {"acme", "tiny"} and everything["estimates"]
    # Reload: a tighter interactive tier comes into force; a bad file is rejected and reported.
    changed = {**POLICY, "tiers": {**POLICY["tiers"], "interactive": {"priority": 3, "latency_ms": 45000}}}

    def rewrite(text: str) -> None:
        path.write_text(text)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        time.sleep(0.05)  # past reload_interval_s

    rewrite(yaml.safe_dump(changed))
    status = client.get("/v1/sla", headers={"authorization": "Bearer operator"}).json()
    assert status["policy"]["tiers"]["interactive"]["latency_ms"] == 45000 and status["policy_status"]["version"] == 2
    assert _qa(client, "k-acme").json()["sla"]["latency_ms"] == 45000
    rewrite("tiers: {interactive: {priority: x}}")
    status = client.get("/v1/sla", headers={"authorization": "Bearer operator"}).json()
    assert status["policy_status"]["version"] == 2 and "priority" in status["policy_status"]["last_reload_error"]
    assert _qa(client, "k-acme").status_code == 200  # still served under the last good policy
    # The metrics name tenants and their spend: an operator's key opens them, a tenant's does not.
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"authorization": "Bearer k-acme"}).json()["error"]["code"] == "operator_only"
    text = client.get("/metrics", headers={"authorization": "Bearer operator"}).text
    for family in (
        "ragyard_sla_requests_total",
        "ragyard_sla_slo_attainment_ratio",
        "ragyard_sla_decisions_total",
        "ragyard_sla_budget_spent_tokens_total",
        "ragyard_sla_policy_version",
    ):
        assert family in text, family


def test_controller_off_reports_so(local_service: Any) -> None:
    with TestClient(create_app(local_service)) as client:
        body = client.get("/v1/sla").json()
    assert body["enabled"] is False and "sla.enabled" in body["detail"]


@pytest.mark.parametrize(("cache_charge", "charged"), [(1.0, 1.0), (0.0, 0.0), (0.5, 0.5)])
def test_a_cached_answer_is_charged_the_policys_cache_charge(
    local_service: Any, base_config: dict[str, Any], tmp_path: Path, cache_charge: float, charged: float
) -> None:
    """A cached answer reports its original tokens; the policy's `cache_charge` (1.0 by default) is the share of
    them charged again: all, none, or half (rounded up per prompt and completion)."""
    from services.pipeline import build_cache

    path = tmp_path / "sla.yaml"
    path.write_text(yaml.safe_dump({**POLICY, "cache_charge": cache_charge}))
    config = load_config(
        {
            **base_config,
            "index": local_service.config.index.model_dump(),
            "sla": {"enabled": True, "policy_path": str(path)},
        }
    )
    router = RouterService(config)
    service = RagService(
        config, local_service.retriever, local_service.workers, router=local_router(router), cache=build_cache(config)
    )
    ctl = router.controller
    assert ctl is not None
    with TestClient(create_app(service)) as client:
        ask = {"question": "Which port does make run serve on?", "style": "short", "max_tokens": 6}
        auth = {"authorization": "Bearer k-acme"}
        first = client.post("/v1/qa", json=ask, headers=auth).json()
        spent = asyncio.run(ctl.ledger.usage("acme", "day")).spent_tokens
        again = client.post("/v1/qa", json=ask, headers=auth).json()
    assert first["cache"]["response"] == "miss" and again["cache"]["response"] == "hit"
    assert spent == first["usage"]["total_tokens"] > 0
    usage = first["usage"]
    expected = math.ceil(usage["prompt_tokens"] * charged) + math.ceil(usage["completion_tokens"] * charged)
    assert asyncio.run(ctl.ledger.usage("acme", "day")).spent_tokens == spent + expected
    assert again["sla"]["tier"] == "interactive" and again["sla"]["ticket"] != first["sla"]["ticket"]
    assert not ctl._tickets


def test_plan_is_explained_without_admission(sla_env: Any) -> None:
    """POST /v1/plan: the controller's choice for the same body and headers, but no ticket, no reservation,
    no decision counted; a request /v1/qa would refuse is refused the same way."""
    client, ctl, _ = sla_env
    before = asyncio.run(ctl.ledger.usage("acme", "day"))
    body = {"question": "What does Ragyard decide per question?", "style": "short", "max_tokens": 8}
    resp = client.post("/v1/plan", json=body, headers={"authorization": "Bearer k-acme"})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "qa.plan" and out["sla"]["ticket"] is None and out["sla"]["tier"] == "interactive"
    assert out["plan"]["model"] == MODEL and "best expected quality" in out["plan"]["reason"]
    assert "answer" not in out and "usage" not in out
    after = asyncio.run(ctl.ledger.usage("acme", "day"))
    assert (after.spent_tokens, after.reserved_tokens) == (before.spent_tokens, before.reserved_tokens)
    assert not ctl._tickets and not ctl.load.jobs
    # The same plan /v1/qa then runs.
    ran = _qa(client, "k-acme").json()
    assert (ran["plan"]["policy"], ran["plan"]["model"]) == (out["plan"]["policy"], out["plan"]["model"])
    err = client.post(
        "/v1/plan", json=body, headers={"authorization": "Bearer k-acme", "x-budget-tokens": "10"}
    ).json()["error"]
    assert err["code"] == "no_plan_fits"
    assert client.post("/v1/plan", json=body).status_code == 401
