"""Per-tenant rate limits at the edge, on the scripted engine: requests per minute, tokens per minute
and answers in progress, each refused with 429 `rate_limit_exceeded`, `Retry-After` and OpenAI's
`x-ratelimit-*` headers; counted in memory and in a real redis-server (where gateway replicas share
them)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from router.sla import PolicyStore
from services.http.app import create_app
from services.http.ratelimit import Slots
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

# The scripted engine and the hashing embedder: the memory store's tests are unit tests, the Redis store's need a
# real redis-server.

MODEL = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"
ASK = {"model": MODEL, "messages": [{"role": "user", "content": "Capital?"}], "policy": "none", "max_tokens": 8}


def _app(hashing_embedder: Any, tmp: Path, limits: str, url: str | None, engine: ScriptedEngine) -> Any:
    name = f"t{uuid.uuid4().hex[:8]}"  # a tenant of its own: Redis keeps counts across tests
    policy = tmp / "sla.yaml"
    policy.write_text(
        "default_tier: standard\ntiers: {standard: {priority: 1, latency_ms: 600000}}\n"
        f"tenants: {{{name}: {{api_keys: [k-{name}], tier: standard, limits: {limits}}}, "
        "free: {api_keys: [k-free], tier: standard}}\n",
        encoding="utf-8",
    )
    config = scripted_config(
        tmp / "index", sla={"enabled": True, "policy_path": str(policy), "budget_url": url or "memory://"}
    )
    svc = scripted_service(config, hashing_embedder, engine)
    app = create_app(svc, sla_policy=PolicyStore(policy, reload_interval_s=60), rate_limit_url=url)
    return app, {"authorization": f"Bearer k-{name}"}


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("redis", marks=[pytest.mark.integration, pytest.mark.redis]),
    ]
)
def store(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


def test_requests_per_minute(hashing_embedder: Any, tmp_path: Path, store: str | None) -> None:
    app, key = _app(hashing_embedder, tmp_path, "{rpm: 3}", store, ScriptedEngine("Zorblat."))
    with TestClient(app) as c:
        remaining = []
        for _ in range(3):
            resp = c.post(CHAT, json=ASK, headers=key)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(int(resp.headers["x-ratelimit-remaining-requests"]))
        assert remaining == [2, 1, 0]
        refused = c.post(CHAT, json=ASK, headers=key)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "3 requests per minute" in refused.json()["error"]["message"]
        assert (
            1 <= int(refused.headers["retry-after"]) <= 60 and refused.headers["x-ratelimit-remaining-requests"] == "0"
        )
        # The window's reset, as OpenAI writes it ("12s"), and the Retry-After it gives.
        reset = refused.headers["x-ratelimit-reset-requests"]
        assert reset.endswith("s") and max(1, int(reset[:-1])) == int(refused.headers["retry-after"]), refused.headers
        assert c.get("/v1/documents", headers=key).status_code == 429  # every /v1 call counts
        free = c.post(CHAT, json=ASK, headers={"authorization": "Bearer k-free"})  # a tenant without limits
        assert free.status_code == 200 and "x-ratelimit-limit-requests" not in free.headers


def test_tokens_per_minute(hashing_embedder: Any, tmp_path: Path, store: str | None) -> None:
    app, key = _app(hashing_embedder, tmp_path, "{tpm: 40}", store, ScriptedEngine("one two three four five six"))
    with TestClient(app) as c:
        first = c.post(CHAT, json=ASK, headers=key)
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "40"
        used = first.json()["usage"]["total_tokens"]
        assert used > 20
        # Each answer's tokens count once it is out; a request is refused once the minute's tokens are spent.
        answered = 1
        second = c.post(CHAT, json=ASK, headers=key)
        while second.status_code == 200 and answered < 5:
            assert int(second.headers["x-ratelimit-remaining-tokens"]) == 40 - answered * used
            answered += 1
            second = c.post(CHAT, json=ASK, headers=key)
        assert second.status_code == 429 and answered == -(-40 // used)  # ceil(40 / used) answers got in
        assert "40 tokens per minute" in second.json()["error"]["message"]
        assert c.get("/v1/documents", headers=key).status_code == 200  # a listing runs no model


def test_answers_in_progress(hashing_embedder: Any, tmp_path: Path, store: str | None) -> None:
    hold = threading.Event()
    app, key = _app(hashing_embedder, tmp_path, "{max_concurrent: 1}", store, ScriptedEngine("a b c d", hold=hold))
    with TestClient(app) as c:
        with c.stream("POST", CHAT, json={**ASK, "stream": True}, headers=key) as open_stream:
            assert open_stream.status_code == 200
            lines = open_stream.iter_lines()
            assert next(lines).startswith("data: ")  # the stream is open and holds its slot
            busy = c.post(CHAT, json=ASK, headers=key)
            assert busy.status_code == 429 and "1 answers in progress" in busy.json()["error"]["message"]
            hold.set()
            assert any("[DONE]" in line for line in lines)
        assert c.post(CHAT, json=ASK, headers=key).status_code == 200  # the slot came back


@pytest.mark.integration
@pytest.mark.redis
def test_slots_free_themselves_when_a_lease_passes(redis_url: str) -> None:
    import asyncio
    import time

    async def run() -> None:
        for slots in (Slots(None, lease_s=0.2), Slots(redis_url, lease_s=0.2, prefix=f"test:{uuid.uuid4().hex}:")):
            held = await slots.acquire("t", 2)
            assert held and await slots.acquire("t", 2) and await slots.acquire("t", 2) is None
            await slots.release("t", held)
            assert await slots.acquire("t", 2) is not None
            time.sleep(0.25)  # the holders died without releasing: their leases pass
            assert await slots.acquire("t", 2) is not None

    asyncio.run(run())


def test_every_route_that_runs_a_model_or_the_embedder_is_counted(
    hashing_embedder: Any, tmp_path: Path, store: str | None
) -> None:
    """The tokenizer routes count against requests per minute; completions and embeddings hold an answer slot
    and their tokens count against tokens per minute, as chat's do."""
    app, key = _app(hashing_embedder, tmp_path, "{rpm: 3}", store, ScriptedEngine("Zorblat."))
    with TestClient(app) as c:
        for _ in range(3):  # the scripted engine has no tokenizer to show (a 400): counted all the same
            assert c.post("/tokenize", json={"model": MODEL, "prompt": "hello"}, headers=key).status_code != 429
        refused = c.post("/detokenize", json={"model": MODEL, "tokens": [1, 2]}, headers=key)
        assert refused.status_code == 429 and "3 requests per minute" in refused.json()["error"]["message"]
    hold = threading.Event()
    app, key = _app(hashing_embedder, tmp_path, "{max_concurrent: 1}", store, ScriptedEngine("a b c d", hold=hold))
    with TestClient(app) as c:
        body = {"model": MODEL, "prompt": "Count:", "max_tokens": 8, "stream": True}
        with c.stream("POST", "/v1/completions", json=body, headers=key) as open_stream:
            lines = open_stream.iter_lines()
            assert next(lines).startswith("data: ")  # the completion is running and holds the tenant's slot
            busy = c.post("/v1/embeddings", json={"model": "auto", "input": "x"}, headers=key)
            assert busy.status_code == 429 and "1 answers in progress" in busy.json()["error"]["message"]
            search = c.post("/v1/vector_stores/shared/search", json={"query": "ferry"}, headers=key)
            assert search.status_code == 429 and "1 answers in progress" in search.json()["error"]["message"]
            hold.set()
            assert any("[DONE]" in line for line in lines)
    app, key = _app(hashing_embedder, tmp_path, "{tpm: 20}", store, ScriptedEngine("Zorblat."))
    with TestClient(app) as c:
        first = c.post("/v1/embeddings", json={"model": "auto", "input": ["one two three four"] * 5}, headers=key)
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] >= 20
        spent = c.post("/v1/embeddings", json={"model": "auto", "input": "again"}, headers=key)
        assert spent.status_code == 429 and "20 tokens per minute" in spent.json()["error"]["message"]


def _budgeted(hashing_embedder: Any, tmp_path: Path, tokens: int) -> tuple[Any, dict[str, str]]:
    """An app whose tenant acme (key k-acme) has a budget of ``tokens`` a day, and acme's headers."""
    policy = tmp_path / "sla.yaml"
    policy.write_text(
        "default_tier: standard\ntiers: {standard: {priority: 1, latency_ms: 600000}}\n"
        f"tenants: {{acme: {{api_keys: [k-acme], tier: standard, budget: {{tokens: {tokens}, period: day}}}}}}\n",
        encoding="utf-8",
    )
    config = scripted_config(tmp_path / "index", sla={"enabled": True, "policy_path": str(policy)})
    svc = scripted_service(config, hashing_embedder, ScriptedEngine("Zorblat."))
    return create_app(svc, sla_policy=PolicyStore(policy, reload_interval_s=60)), {"authorization": "Bearer k-acme"}


@pytest.mark.unit
def test_embeddings_draw_on_the_tenants_budget(hashing_embedder: Any, tmp_path: Path) -> None:
    """A tenant with a token budget pays for its embeddings: what was embedded is charged (its usage), a request
    whose worst case the budget cannot cover is a 429 `insufficient_quota` before any embedding, and a refused
    request is charged nothing."""
    app, key = _budgeted(hashing_embedder, tmp_path, 60)

    def remaining() -> int:
        return int(c.get("/v1/sla", headers=key).json()["tenants"]["acme"]["remaining_tokens"])

    with TestClient(app) as c:
        assert remaining() == 60
        ok = c.post("/v1/embeddings", json={"model": "auto", "input": ["one two three", "four five"]}, headers=key)
        assert ok.status_code == 200
        assert remaining() == 60 - ok.json()["usage"]["total_tokens"]
        before = remaining()
        over = c.post("/v1/embeddings", json={"model": "auto", "input": "word " * 100}, headers=key)
        assert over.status_code == 429 and over.json()["error"]["code"] == "insufficient_quota"
        assert remaining() == before


@pytest.mark.unit
def test_uploads_draw_on_the_tenants_budget(hashing_embedder: Any, tmp_path: Path) -> None:
    """A tenant with a token budget pays for the text its uploads embed: the tokens the result reports are
    charged, the same documents sent again unchanged cost nothing, and an upload whose worst case the budget
    cannot cover is a 429 `insufficient_quota` with nothing written. A job pays step by step."""
    app, key = _budgeted(hashing_embedder, tmp_path, 400)
    notes = {"documents": [{"id": "n1", "text": "The Lim bridge is maintained by Quux."}, {"id": "n2", "text": "Hi."}]}

    def remaining() -> int:
        return int(c.get("/v1/sla", headers=key).json()["tenants"]["acme"]["remaining_tokens"])

    with TestClient(app) as c:
        first = c.post("/v1/documents", json=notes, headers=key)
        assert first.status_code == 200 and first.json()["tokens"] > 0
        assert remaining() == 400 - first.json()["tokens"]
        before = remaining()
        again = c.post("/v1/documents", json=notes, headers=key)
        assert again.json()["unchanged"] == ["n1", "n2"] and again.json()["tokens"] == 0 and remaining() == before
        big = c.post("/v1/documents", json={"documents": [{"id": "big", "text": "word " * 200}]}, headers=key)
        assert big.status_code == 429 and big.json()["error"]["code"] == "insufficient_quota"
        assert remaining() == before and "big" not in {
            d["id"] for d in c.get("/v1/documents", headers=key).json()["data"]
        }
        job = c.post(
            "/v1/documents",
            files=[("file", ("n3.txt", b"Ferries leave at nine.", "text/plain"))],
            headers={**key, "prefer": "respond-async"},
        )
        assert job.status_code == 202
        for _ in range(200):
            done = c.get(job.headers["location"], headers=key).json()
            if done["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.05)
        assert done["status"] == "succeeded" and done["tokens"] > 0 and remaining() == before - done["tokens"]
