"""Tenancy at the HTTP edge, on the scripted engine with the hashing embedder and real FAISS: each tenant's
documents are its own (found, listed, replaced and deleted only by it), the shared namespace is read by
all and written by operators, and one tenant's cached answer is never another's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from router.sla import PolicyStore
from services.http.app import create_app
from services.pipeline import RagService, build_cache
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

MODEL = "smollm2-135m-instruct"
OP = {"authorization": "Bearer op-key"}
ACME = {"authorization": "Bearer k-acme"}
ZED = {"authorization": "Bearer k-zed"}
SECRET = "The acme launch code is tangerine-42."


@pytest.fixture
def env(hashing_embedder: Any, tmp_path: Any) -> Iterator[tuple[TestClient, RagService]]:
    """A fresh service and index per test: each test's documents are its own, in any order."""
    tmp = tmp_path
    policy = tmp / "sla.yaml"
    policy.write_text(
        "default_tier: standard\ntiers: {standard: {priority: 1, latency_ms: 600000}}\n"
        "tenants: {acme: {api_keys: [k-acme], tier: standard}, zed: {api_keys: [k-zed], tier: standard}}\n",
        encoding="utf-8",
    )
    config = scripted_config(tmp / "index", cache={"response_cache_url": "memory://"})
    svc: RagService = scripted_service(
        config, hashing_embedder, ScriptedEngine("tangerine-42."), cache=build_cache(config)
    )
    app = create_app(svc, api_keys=["op-key"], sla_policy=PolicyStore(policy, reload_interval_s=0))
    with TestClient(app) as c:
        yield c, svc


def _ask(c: TestClient, headers: dict[str, str], question: str = "What is the acme launch code?") -> dict[str, Any]:
    resp = c.post("/v1/qa", json={"question": question, "policy": "single", "max_tokens": 8}, headers=headers)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def _upload(c: TestClient, headers: dict[str, str], doc_id: str, text: str, **query: str) -> Any:
    return c.post("/v1/documents", json={"documents": [{"id": doc_id, "text": text}]}, headers=headers, params=query)


def test_a_tenants_documents_are_its_own(env: tuple[TestClient, RagService]) -> None:
    c, svc = env
    assert _upload(c, OP, "handbook", "The shared handbook says: be kind.").json()["namespace"] == "shared"
    up = _upload(c, ACME, "acme-secret", SECRET)
    assert up.status_code == 200 and up.json()["namespace"] == "acme" and up.json()["added"] == ["acme-secret"]

    mine = _ask(c, ACME)
    assert "acme-secret" in {x["document_id"] for x in mine["citations"]}
    theirs = _ask(c, ZED)
    assert all(x["document_id"] != "acme-secret" and SECRET not in x["text"] for x in theirs["citations"])
    assert theirs["cache"]["response"] == "miss"  # the same question, another tenant: not acme's cached answer
    assert "handbook" in {x["document_id"] for x in _ask(c, ZED, "What does the shared handbook say?")["citations"]}

    # listing: each tenant its own and the shared namespace; the operator everything
    ids = lambda h, **q: [d["id"] for d in c.get("/v1/documents", headers=h, params=q).json()["data"]]  # noqa: E731
    assert ids(ACME) == ["acme-secret", "handbook"] and ids(ZED) == ["handbook"]
    assert ids(OP) == ["acme-secret", "handbook"] and ids(OP, namespace="acme") == ["acme-secret"]
    assert c.get("/v1/documents", headers=ZED, params={"namespace": "acme"}).json()["error"]["param"] == "namespace"
    assert c.get("/v1/documents/acme-secret", headers=ZED).status_code == 404
    assert c.get("/v1/documents/acme-secret", headers=ACME).json()["namespace"] == "acme"


def test_ids_are_scoped_to_a_namespace(env: tuple[TestClient, RagService]) -> None:
    """Writing an id another tenant holds is no 403 (an existence oracle, and a way to squat ids): it is the
    writer's own document, and neither tenant's reads, writes or deletes touch the other's."""
    c, svc = env
    assert _upload(c, OP, "handbook", "The shared handbook says: be kind.").status_code == 200
    assert _upload(c, ACME, "faq", SECRET).status_code == 200
    acme_before = asyncio.run(svc.retriever.documents(["acme"]))
    theirs = _upload(c, ZED, "faq", "Zed's faq: the office opens at ten.")
    assert theirs.status_code == 200 and theirs.json()["added"] == ["faq"] and theirs.json()["namespace"] == "zed"
    assert asyncio.run(svc.retriever.documents(["acme"])) == acme_before
    assert c.get("/v1/documents/faq", headers=ZED).json()["namespace"] == "zed"
    assert c.get("/v1/documents/faq", headers=ACME).json()["namespace"] == "acme"
    assert "faq" in {x["document_id"] for x in _ask(c, ACME)["citations"] if SECRET in x["text"]}
    # a tenant's own document shadows a shared one of the same id, for that tenant alone
    assert _upload(c, ZED, "handbook", "Zed's handbook: bring snacks.").status_code == 200
    assert c.get("/v1/documents/handbook", headers=ZED).json()["namespace"] == "zed"
    assert c.get("/v1/documents/handbook", headers=ACME).json()["namespace"] == "shared"
    elsewhere = _upload(c, ZED, "z1", "text", namespace="acme")
    assert elsewhere.status_code == 403 and elsewhere.json()["error"]["code"] == "namespace_not_allowed"
    # a batch with a refused document changes nothing, its other documents included
    before = asyncio.run(svc.retriever.documents(None))
    batch = c.post(
        "/v1/documents",
        json={"documents": [{"id": "zed-ok", "text": "fine"}, {"id": "faq", "text": "a"}, {"id": "faq", "text": "b"}]},
        headers=ZED,
    )
    assert batch.status_code == 400 and batch.json()["error"]["code"] == "invalid_document"
    assert asyncio.run(svc.retriever.documents(None)) == before
    # deletes: each tenant its own; once zed's is gone, acme's faq is not even seen, the shared handbook refused
    assert c.delete("/v1/documents/faq", headers=ZED).json()["deleted"] is True
    assert c.delete("/v1/documents/faq", headers=ZED).status_code == 404
    assert c.get("/v1/documents/faq", headers=ACME).json()["namespace"] == "acme"
    assert c.delete("/v1/documents/handbook", headers=ZED).json()["deleted"] is True
    assert c.delete("/v1/documents/handbook", headers=ZED).json()["error"]["code"] == "document_not_yours"
    # an operator names the namespace when an id is in several
    assert _upload(c, ZED, "faq", "Zed's faq again.").status_code == 200
    both = c.delete("/v1/documents/faq", headers=OP)
    assert both.status_code == 400 and both.json()["error"]["code"] == "ambiguous_document_id"
    assert c.delete("/v1/documents/faq", headers=OP, params={"namespace": "zed"}).json()["deleted"] is True
    assert c.get("/v1/documents/faq", headers=ACME).json()["namespace"] == "acme"
    assert c.delete("/v1/documents/faq", headers=OP).json()["deleted"] is True
    assert c.get("/v1/documents/faq", headers=ACME).status_code == 404


def test_the_same_content_in_two_tenants_is_two_documents(env: tuple[TestClient, RagService]) -> None:
    c, _ = env
    body = {"documents": [{"text": "Identical text, no id."}]}
    a = c.post("/v1/documents", json=body, headers=ACME).json()
    z = c.post("/v1/documents", json=body, headers=ZED).json()
    assert a["added"] and z["added"] and a["added"] != z["added"]  # no 403 that would tell zed acme has it


def test_listing_pages(env: tuple[TestClient, RagService]) -> None:
    c, _ = env
    for n in range(5):
        assert _upload(c, ACME, f"page-{n}", f"Page {n}.").status_code == 200
    first = c.get("/v1/documents", headers=ACME, params={"limit": 2}).json()
    assert first["has_more"] and len(first["data"]) == 2
    rest = c.get("/v1/documents", headers=ACME, params={"limit": 1000, "after": first["last_id"]}).json()
    everything = c.get("/v1/documents", headers=ACME, params={"limit": 1000}).json()["data"]
    assert [d["id"] for d in first["data"] + rest["data"]] == [d["id"] for d in everything]
    assert c.get("/v1/documents", headers=ACME, params={"limit": 0}).status_code == 400
    # one id in acme's namespace and the shared one: a page never ends between them
    assert _upload(c, OP, "page-1", "The shared page one.").status_code == 200
    first = c.get("/v1/documents", headers=ACME, params={"limit": 2}).json()
    assert [(d["id"], d["namespace"]) for d in first["data"]] == [
        ("page-0", "acme"),
        ("page-1", "acme"),
        ("page-1", "shared"),
    ]
    rest = c.get("/v1/documents", headers=ACME, params={"after": first["last_id"]}).json()["data"]
    assert [d["id"] for d in rest] == ["page-2", "page-3", "page-4"]


def test_vector_stores_are_the_namespaces_a_key_may_read(env: tuple[TestClient, RagService]) -> None:
    c, _ = env
    _upload(c, OP, "handbook", "The shared handbook says: be kind.")
    _upload(c, ACME, "acme-secret", SECRET)
    listed = c.get("/v1/vector_stores", headers=ACME).json()
    by_id = {s["id"]: s for s in listed["data"]}
    assert set(by_id) == {"acme", "shared"} and by_id["acme"]["file_counts"]["completed"] == 1
    assert {s["id"] for s in c.get("/v1/vector_stores", headers=ZED).json()["data"]} == {"zed", "shared"}
    query = {"query": "What is the acme launch code?", "max_num_results": 3}
    found = c.post("/v1/vector_stores/acme/search", json=query, headers=ACME).json()
    assert found["object"] == "vector_store.search_results.page"
    assert [r["file_id"] for r in found["data"]] == ["acme-secret"]
    assert found["data"][0]["content"][0]["text"] == SECRET and 0 < found["data"][0]["score"] <= 1
    # Another tenant's store is not found, neither listed nor searched; the shared one holds no secret.
    other = c.post("/v1/vector_stores/acme/search", json=query, headers=ZED)
    assert other.status_code == 404 and other.json()["error"]["code"] == "vector_store_not_found"
    shared = c.post("/v1/vector_stores/shared/search", json=query, headers=ZED).json()
    assert "acme-secret" not in [r["file_id"] for r in shared["data"]]
    # What the search does not implement is refused by name.
    refused = c.post("/v1/vector_stores/acme/search", json={**query, "filters": {"type": "eq"}}, headers=ACME)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "filters"
    assert refused.json()["error"]["code"] == "unsupported_parameter"
    # An operator sees every namespace that holds documents.
    assert {"acme", "shared"} <= {s["id"] for s in c.get("/v1/vector_stores", headers=OP).json()["data"]}


def test_a_tenants_ingestion_jobs_are_its_own(env: tuple[TestClient, RagService]) -> None:
    c, _ = env
    files = [("file", ("plan.md", b"# Plan\n\nAcme's plan is to launch on Tuesday.", "text/markdown"))]
    resp = c.post("/v1/documents", files=files, headers={**ACME, "prefer": "respond-async"})
    assert resp.status_code == 202 and resp.json()["namespace"] == "acme"
    location = resp.headers["location"]
    other = c.get(location, headers=ZED)
    assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found"  # not even its existence
    assert c.get(location, headers=OP).status_code == 200  # an operator reads every job
    deadline = time.monotonic() + 60
    while (job := c.get(location, headers=ACME).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "succeeded" and job["added"] == ["file:plan.md"]
