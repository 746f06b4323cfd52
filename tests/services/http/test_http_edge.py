"""The HTTP edge's control flow over the scripted engine (tests/fakes.py): a failure after the 200 goes
into the stream as an OpenAI error event, an engine failure on a plain request is a 500 in OpenAI's
shape that says no more, every row of the error table has its status, and a request needing an
unreachable budget store is a 503. FAISS, the router and the cache are real; the embedder is the hashing one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors
from ray.serve._private.common import DeploymentID

from cache import errors as cache_errors
from retrieval import errors as retrieval_errors
from retrieval.retriever import Retriever
from router import errors as router_errors
from services.config import load_config
from services.deployments.retriever import RetrieverService
from services.deployments.worker import Worker
from services.http.app import create_app
from services.http.errors import CONVERSIONS
from services.pipeline import RagService
from services.pipeline.clients import local_retriever, local_worker
from tests.fakes import ScriptedEngine

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

MODEL = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def engine() -> ScriptedEngine:
    return ScriptedEngine("Zorblat is the capital.")


@pytest.fixture(scope="module")
def client(engine: ScriptedEngine, hashing_embedder: Any, session_tmp: Path) -> Iterator[TestClient]:
    config = load_config(
        {
            "models": [{"id": MODEL}],
            "index": {"dir": str(session_tmp / "edge-index")},
            "corpus": {"ingest_on_start": False},
            "cache": {"response_cache_url": "memory://"},
        }
    )
    retriever = local_retriever(
        RetrieverService(config, retriever=Retriever.create(index_dir=config.index.dir, embedder=hashing_embedder))
    )
    svc = RagService(config, retriever, {MODEL: local_worker(Worker(config, MODEL, engine=engine))}, cache=None)
    app = create_app(svc)
    raising = APIRouter()

    @raising.get("/v1/raise/{n}")
    async def _raise(n: int) -> None:
        raise EXAMPLES[n]

    app.include_router(raising)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _events(resp: Any) -> list[str]:
    return [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]


def test_a_failure_after_the_200_is_an_error_event_then_done(client: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after = 2
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Capital?"}], "stream": True, "policy": "none"}
        with client.stream("POST", CHAT, json=body) as resp:
            assert resp.status_code == 200
            events = _events(resp)
    finally:
        engine.fail_after = None
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if "choices" in p)
    assert text == "Zorblat is"  # what was generated before the failure reached the client
    err = payloads[-1]["error"]
    assert err["code"] == "internal_error" and "scripted" not in err["message"]  # the log has the details


def test_an_engine_failure_on_a_plain_request_is_an_opaque_500(client: TestClient, engine: ScriptedEngine) -> None:
    engine.fail_after = 0
    try:
        resp = client.post("/v1/qa", json={"question": "Capital?", "policy": "none", "max_tokens": 8})
    finally:
        engine.fail_after = None
    assert resp.status_code == 500
    assert resp.json()["error"] == {
        "message": "internal error; the server log has the details",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    # and the next request is whole
    ok = client.post("/v1/qa", json={"question": "Capital?", "policy": "none", "max_tokens": 8}).json()
    assert ok["answer"] == "Zorblat is the capital."


EXAMPLES: list[Exception] = [
    router_errors.UnknownModelError("model 'x' does not exist"),
    retrieval_errors.UnknownPolicyError("unknown retrieval policy 'x'"),
    retrieval_errors.UnsupportedDocumentTypeError("type 'x' is not supported"),
    retrieval_errors.DocumentFormatError("bad csv"),
    retrieval_errors.OutputFormatError("the answer is not JSON"),
    retrieval_errors.DocumentOwnershipError("document 'x' is in the shared namespace"),
    retrieval_errors.AmbiguousDocumentError("document id 'x' is held by 2 namespaces (a, b): name one"),
    retrieval_errors.DocumentNotFoundError("no document 'x'"),
    router_errors.SlaOverrideError("above your tier", param="x-sla-tier"),
    router_errors.SlaHeaderError("not a number", param="x-sla-latency-ms"),
    router_errors.PlanUnavailableError("no plan fits", param="x-sla-latency-ms"),
    router_errors.BudgetExhaustedError("spent", retry_after=60),
    router_errors.OverloadedError("busy", retry_after=2),
    router_errors.SlaRequestError("other", param="x"),
    cache_errors.BackendUnavailableError("redis down"),
    retrieval_errors.IndexWriteError("the index could not be saved: disk full"),
    retrieval_errors.GenerationAheadError("corpus generation 9 does not exist yet"),
    retrieval_errors.GenerationLagError("this replica could not reach corpus generation 9"),
    retrieval_errors.CorpusLogUnavailableError("corpus log (redis): connection refused"),
    retrieval_errors.CorpusBusyError("the corpus log moved under this write 8 times running"),
    ray_errors.ActorUnavailableError("restarting", None),
    ray_errors.ActorDiedError(),
    serve_errors.ReplicaUnavailableError("worker#abc"),
    serve_errors.DeploymentUnavailableError(DeploymentID("router", "ragyard")),
    serve_errors.BackPressureError(num_queued_requests=300, max_queued_requests=256),
    RuntimeError("a bug"),
]
EXPECTED = [
    (404, "model_not_found", None),
    (400, "unknown_policy", None),
    (415, "unsupported_document_type", None),
    (400, "invalid_document", None),
    (500, "response_format_not_met", None),
    (403, "document_not_yours", None),
    (400, "ambiguous_document_id", None),
    (404, "document_not_found", None),
    (403, "sla_override_not_allowed", None),
    (400, "invalid_sla_header", None),
    (400, "no_plan_fits", None),
    (429, "insufficient_quota", "60"),
    (429, "rate_limit_exceeded", "2"),
    (400, "invalid_request", None),
    (503, "budget_store_unavailable", None),
    (503, "index_write_failed", None),
    (400, "invalid_min_generation", None),
    (503, "corpus_behind", "1"),
    (503, "corpus_store_unavailable", "1"),
    (503, "corpus_busy", "1"),
    (503, "replica_unavailable", "1"),
    (503, "replica_unavailable", "1"),
    (503, "replica_unavailable", "1"),
    (503, "replica_unavailable", "1"),
    (503, "overloaded", "1"),
    (500, "internal_error", None),
]


def test_the_error_table_has_a_row_for_every_example() -> None:
    # ActorDiedError stands for its base, RayActorError (what a dead replica's call raises).
    classes = {ray_errors.RayActorError if type(e) is ray_errors.ActorDiedError else type(e) for e in EXAMPLES[:-1]}
    assert classes == {cls for cls, _ in CONVERSIONS}


@pytest.mark.parametrize("n", range(len(EXAMPLES)), ids=[type(e).__name__ for e in EXAMPLES])
def test_each_lower_layer_error_has_its_status(client: TestClient, n: int) -> None:
    resp = client.get(f"/v1/raise/{n}")
    status, code, retry = EXPECTED[n]
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    assert resp.headers.get("retry-after") == retry


def test_readyz_says_what_is_wrong_with_corrupt_router_artifacts(
    engine: ScriptedEngine, hashing_embedder: Any, session_tmp: Path, tmp_path: Path
) -> None:
    """A corrupt classifier and quality table do not stop the service (adaptive falls back, auto is the
    first model); /readyz names both, and a question is still answered with the fallback plan."""
    (tmp_path / "complexity.npz").write_bytes(b"not an npz")
    (tmp_path / "quality.json").write_text('{"format": 1, "table": {"m": {"none": {"A": 7}}}}', encoding="utf-8")
    config = load_config(
        {
            "models": [{"id": MODEL}],
            "index": {"dir": str(session_tmp / "edge-index")},
            "corpus": {"ingest_on_start": False},
            "router": {"artifact": str(tmp_path / "complexity.npz"), "quality_table": str(tmp_path / "quality.json")},
        }
    )
    retriever = local_retriever(
        RetrieverService(config, retriever=Retriever.create(index_dir=config.index.dir, embedder=hashing_embedder))
    )
    svc = RagService(config, retriever, {MODEL: local_worker(Worker(config, MODEL, engine=engine))})
    with TestClient(create_app(svc)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        router = ready.json()["router"]
        assert router["classifier"] is None and "complexity.npz" in router["classifier_error"]
        assert router["quality_table"] is None and "malformed" in router["quality_table_error"]
        rec = c.post("/v1/qa", json={"question": "Capital?", "policy": "adaptive", "max_tokens": 8}).json()
        assert rec["plan"]["complexity"]["policy"] == config.router.fallback_policy and rec["answer"]


def test_an_unreachable_budget_store_is_a_503(
    engine: ScriptedEngine, hashing_embedder: Any, session_tmp: Path, tmp_path: Path
) -> None:
    """The SLA controller's budgets live in Redis; with Redis down (a closed loopback port) a tenant's
    request gets 503 budget_store_unavailable, not a 500, and nothing runs on the model."""
    from tests.utils import free_port

    policy = tmp_path / "sla.yaml"
    policy.write_text(
        "default_tier: standard\n"
        "tiers: {standard: {priority: 1, latency_ms: 600000}}\n"
        "tenants: {acme: {api_keys: [k-acme], tier: standard, budget: {tokens: 10000}}}\n",
        encoding="utf-8",
    )
    config = load_config(
        {
            "models": [{"id": MODEL}],
            "index": {"dir": str(session_tmp / "edge-index")},
            "corpus": {"ingest_on_start": False},
            "sla": {
                "enabled": True,
                "policy_path": str(policy),
                "budget_url": f"redis://127.0.0.1:{free_port()}/0",
            },
        }
    )
    retriever = local_retriever(
        RetrieverService(config, retriever=Retriever.create(index_dir=config.index.dir, embedder=hashing_embedder))
    )
    svc = RagService(config, retriever, {MODEL: local_worker(Worker(config, MODEL, engine=engine))})
    asked = len(engine.prompts)
    with TestClient(create_app(svc)) as c:
        resp = c.post(
            "/v1/qa",
            json={"question": "Capital?", "policy": "none", "max_tokens": 8},
            headers={"authorization": "Bearer k-acme"},
        )
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "budget_store_unavailable"
    assert len(engine.prompts) == asked


def test_the_middleware_counts_what_it_refuses(
    engine: ScriptedEngine, hashing_embedder: Any, session_tmp: Path
) -> None:
    """A request without a key is a 401, counted by route and status (an unknown path as "other"); a body
    declared over the limit is a 413 in OpenAI's shape (a chunked one too: test_edge_guards.py); a request
    with the key is answered."""
    from services import metrics

    config = load_config(
        {
            "models": [{"id": MODEL}],
            "index": {"dir": str(session_tmp / "edge-index")},
            "corpus": {"ingest_on_start": False},
        }
    )
    retriever = local_retriever(
        RetrieverService(config, retriever=Retriever.create(index_dir=config.index.dir, embedder=hashing_embedder))
    )
    svc = RagService(config, retriever, {MODEL: local_worker(Worker(config, MODEL, engine=engine))}, cache=None)

    def count(route: str, status: str) -> float:
        return float(metrics.HTTP_REQUESTS.labels(route, "POST", status).value())

    before = (count("/v1/qa", "401"), count("other", "401"))
    with TestClient(create_app(svc, max_body_bytes=1024, api_keys=["op"])) as c:
        denied = c.post("/v1/qa", json={"question": "Capital?"})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        assert c.post("/v1/nothing-here", json={}).status_code == 401  # counted as "other"

        big = c.post(
            "/v1/qa",
            content=b'{"question": "' + b"x" * 2048 + b'"}',
            headers={"authorization": "Bearer op", "content-type": "application/json"},
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
        ok = c.post(
            "/v1/qa",
            json={"question": "Capital?", "policy": "none", "max_tokens": 8},
            headers={"authorization": "Bearer op"},
        )
        assert ok.status_code == 200 and ok.json()["answer"]
    after = (count("/v1/qa", "401"), count("other", "401"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]
