"""The edge's guards on the scripted engine: bodies bounded in size (declared or chunked) and depth,
numbers in range, cross-site and rebound-host requests refused, keys checked by digest and never empty,
the operator routes closed to tenants, and a policy reload that cannot open the API. Every refusal is
a 4xx in OpenAI's shape, counted in the metrics, and nothing already stored is touched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from router.sla import PolicyStore, hash_api_key
from services import metrics
from services.config import load_config
from services.errors import ConfigError
from services.http.app import create_app
from services.pipeline import RagService
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

MODEL = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"
TIER = "default_tier: standard\ntiers: {standard: {priority: 1, latency_ms: 600000}}\n"
ASK = {"model": MODEL, "messages": [{"role": "user", "content": "Capital?"}], "policy": "none", "max_tokens": 8}


@pytest.fixture(scope="module")
def svc(hashing_embedder: Any, session_tmp: Path) -> RagService:
    config = scripted_config(session_tmp / "guards-index")
    service: RagService = scripted_service(config, hashing_embedder, ScriptedEngine("Zorblat is the capital."))
    return service


@pytest.fixture(scope="module")
def open_client(svc: RagService) -> Iterator[TestClient]:
    with TestClient(create_app(svc, max_body_bytes=64 * 1024), raise_server_exceptions=False) as c:
        yield c


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code and set(err) == {"message", "type", "param", "code"}
    return err


def _count(route: str, status: str) -> float:
    return float(metrics.HTTP_REQUESTS.labels(route, "POST", status).value())


def test_a_chunked_body_over_the_limit_is_a_counted_413(open_client: TestClient) -> None:
    before = _count(CHAT, "413")

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024  # 100 KiB, no Content-Length

    _error(
        open_client.post(CHAT, content=chunks(), headers={"content-type": "application/json"}), 413, "payload_too_large"
    )
    declared = open_client.post(CHAT, content=b" " * (65 * 1024), headers={"content-type": "application/json"})
    _error(declared, 413, "payload_too_large")
    assert _count(CHAT, "413") - before == 2
    assert open_client.post(CHAT, json=ASK).status_code == 200  # a chunked body under the limit is read whole

    def small() -> Iterator[bytes]:
        import json

        body = json.dumps(ASK).encode()
        yield body[:10]
        yield body[10:]

    resp = open_client.post(CHAT, content=small(), headers={"content-type": "application/json"})
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]


def test_deep_json_is_a_400_at_every_route_and_nothing_is_stored(open_client: TestClient, svc: RagService) -> None:
    import asyncio

    docs_before = asyncio.run(svc.retriever.stats())["documents"]
    deep = b"[" * 5000 + b"]" * 5000
    for path in (CHAT, "/v1/qa", "/v1/plan", "/v1/documents"):
        _error(open_client.post(path, content=deep, headers={"content-type": "application/json"}), 400, "json_too_deep")
    meta: dict[str, Any] = {"a": 1}
    for _ in range(700):
        meta = {"a": meta}
    resp = open_client.post("/v1/documents", json={"documents": [{"text": "hello", "metadata": meta}]})
    _error(resp, 400, "json_too_deep")
    five: dict[str, Any] = {"a": {"b": {"c": {"d": {"e": 1}}}}}  # 5 levels: under the body's bound, over metadata's
    err = _error(
        open_client.post("/v1/documents", json={"documents": [{"text": "x", "metadata": five}]}), 400, "invalid_request"
    )
    assert "documents.0.metadata" in (err["param"] or "") and "more than 4 levels" in err["message"]
    big = {"k": "x" * 9000}
    err = _error(
        open_client.post("/v1/documents", json={"documents": [{"text": "x", "metadata": big}]}), 400, "invalid_request"
    )
    assert "bytes" in err["message"]
    assert asyncio.run(svc.retriever.stats())["documents"] == docs_before
    ok = open_client.post(
        "/v1/documents", json={"documents": [{"id": "guards-ok", "text": "Zorblat.", "metadata": {"a": {"b": 1}}}]}
    )
    assert ok.status_code == 200 and ok.json()["added"] == ["guards-ok"]
    # invalid JSON is still the parser's own message
    _error(open_client.post(CHAT, content=b"{nope", headers={"content-type": "application/json"}), 400, "invalid_json")


def test_numbers_and_counts_out_of_range_are_400s(open_client: TestClient) -> None:
    err = _error(open_client.post(CHAT, json={**ASK, "seed": 2**70}), 400, "invalid_request")
    assert err["param"] == "seed"
    assert open_client.post(CHAT, json={**ASK, "seed": 2**63 - 1}).status_code == 200
    many = [{"role": "user", "content": "hi"}] * 513
    assert _error(open_client.post(CHAT, json={**ASK, "messages": many}), 400, "invalid_request")["param"] == "messages"
    parts = [{"type": "text", "text": "a"}] * 65
    resp = open_client.post(CHAT, json={**ASK, "messages": [{"role": "user", "content": parts}]})
    assert "64 content parts" in _error(resp, 400, "invalid_request")["message"]


def test_a_cross_site_post_is_refused_and_the_own_origin_is_not(svc: RagService) -> None:
    """A page on another site may POST text/plain without a preflight: that would be a document upload."""
    import asyncio

    docs_before = asyncio.run(svc.retriever.stats())["documents"]
    with TestClient(create_app(svc, allowed_origins=["https://chat.example.org"])) as c:
        upload = {"content": b"planted text", "headers": {"content-type": "text/plain"}}
        for origin in ("https://evil.example", "null"):
            resp = c.post(
                "/v1/documents?id=planted", headers={**upload["headers"], "origin": origin}, content=upload["content"]
            )
            _error(resp, 403, "origin_not_allowed")
        assert asyncio.run(svc.retriever.stats())["documents"] == docs_before
        assert c.get("/healthz", headers={"origin": "https://evil.example"}).status_code == 200  # reads are safe
        assert c.post(CHAT, json=ASK, headers={"origin": "http://testserver"}).status_code == 200  # its own page
        assert c.post(CHAT, json=ASK, headers={"origin": "https://chat.example.org"}).status_code == 200
        assert c.post(CHAT, json=ASK).status_code == 200  # not a browser


def test_a_rebound_host_is_refused_on_loopback() -> None:
    assert load_config({"server": {"host": "127.0.0.1"}}).server.effective_allowed_hosts() == [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "::1",
    ]
    assert load_config({"server": {"host": "0.0.0.0"}}).server.effective_allowed_hosts() is None
    assert load_config(
        {"server": {"host": "0.0.0.0", "allowed_hosts": ["rag.example"]}}
    ).server.effective_allowed_hosts() == ["rag.example"]


def test_the_host_check(svc: RagService) -> None:
    app = create_app(svc, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://attacker.example") as c:
        _error(c.get("/v1/sla"), 403, "host_not_allowed")
    with TestClient(app, base_url="http://localhost:8000") as c:
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("keys", [[""], ["   "], ["has space"], [" padded"], ["sha256:short"]])
def test_unusable_keys_are_refused_at_config_load(keys: list[str]) -> None:
    with pytest.raises(ConfigError, match="api_keys"):
        load_config({"server": {"api_keys": keys}})


def test_operator_routes_and_readiness_details_need_an_operator_key(svc: RagService, tmp_path: Path) -> None:
    policy = tmp_path / "sla.yaml"
    policy.write_text(TIER + "tenants: {acme: {api_keys: [k-acme], tier: standard}}\n", encoding="utf-8")
    store = PolicyStore(policy, reload_interval_s=0)
    # the operator key configured as its digest: the key opens, the digest itself does not
    app = create_app(svc, api_keys=[hash_api_key("op-key")], sla_policy=store)
    op = {"authorization": "Bearer op-key"}
    tenant = {"authorization": "Bearer k-acme"}
    with TestClient(app) as c:
        for path in ("/metrics", "/openapi.json", "/docs"):
            _error(c.get(path), 401, "invalid_api_key")
            _error(c.get(path, headers=tenant), 403, "operator_only")
            assert c.get(path, headers=op).status_code == 200, path
        _error(c.get("/metrics", headers={"authorization": "Bearer " + hash_api_key("op-key")}), 401, "invalid_api_key")
        _error(c.get("/metrics", headers={"authorization": "Basic b3A6a2V5"}), 401, "invalid_api_key")
        assert c.get("/readyz").json() == {"status": "ready"}  # a prober sends no key
        assert c.get("/readyz", headers=tenant).json() == {"status": "ready"}
        assert "retriever" in c.get("/readyz", headers=op).json()
        assert c.get("/healthz").status_code == 200
        assert c.post(CHAT, json=ASK, headers=tenant).status_code == 200

        # A reload that drops the last tenant closes the API to it and does not open it to anyone.
        policy.write_text(TIER, encoding="utf-8")
        _error(c.post(CHAT, json=ASK), 401, "invalid_api_key")
        _error(c.post(CHAT, json=ASK, headers=tenant), 401, "invalid_api_key")
        assert c.post(CHAT, json=ASK, headers=op).status_code == 200


def test_a_policy_with_tenants_requires_keys_even_without_operator_keys(svc: RagService, tmp_path: Path) -> None:
    policy = tmp_path / "sla.yaml"
    policy.write_text(TIER + "tenants: {acme: {api_keys: [k-acme], tier: standard}}\n", encoding="utf-8")
    with TestClient(create_app(svc, sla_policy=PolicyStore(policy, reload_interval_s=0))) as c:
        _error(c.post(CHAT, json=ASK), 401, "invalid_api_key")
        _error(c.get("/metrics"), 401, "invalid_api_key")
        policy.write_text(TIER, encoding="utf-8")
        _error(c.post(CHAT, json=ASK), 401, "invalid_api_key")  # latched: still closed


def test_a_failed_save_is_a_503_and_leaves_nothing_half_visible(
    open_client: TestClient, svc: RagService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up during an upload: a 503 that names it, the documents before it all still there
    (in memory and in the snapshot CURRENT names), and no partial snapshot left behind."""
    import asyncio
    import errno

    import retrieval.snapshots as store_module

    # A snapshot to keep, whichever tests ran before this one.
    first = open_client.post("/v1/documents", json={"documents": [{"id": "fits-first", "text": "Room enough."}]})
    assert first.status_code == 200
    before = asyncio.run(svc.retriever.documents(None))
    store = svc.retriever.target.retriever.store  # type: ignore[attr-defined]
    current = (store.directory / "CURRENT").read_text()

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "_write_file", full)
    resp = open_client.post("/v1/documents", json={"documents": [{"id": "too-much", "text": "Does not fit."}]})
    err = _error(resp, 503, "index_write_failed")
    assert "No space left" in err["message"] and str(store.directory) not in err["message"]
    monkeypatch.undo()
    assert asyncio.run(svc.retriever.documents(None)) == before
    assert (store.directory / "CURRENT").read_text() == current
    assert not list((store.directory / "snapshots").glob(".*.tmp"))
    ok = open_client.post("/v1/documents", json={"documents": [{"id": "fits-later", "text": "Room again."}]})
    assert ok.status_code == 200 and ok.json()["added"] == ["fits-later"]
