"""What the README's OpenAI table and settings promise at the HTTP edge, each claim checked once: `stop` takes
at most 4 strings; the endpoints Ragyard does not serve are 404s; the refused fields are refused by name; the
fields that change nothing are accepted; the JSON nesting limit; one vector store by id; the web chat can be
switched off; an answer with logprobs is never served from the response cache. The scripted engine answers
(tests/fakes.py): these are checks of the edge, not of a model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.http.app import create_app
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

CHAT = "/v1/chat/completions"


def _ask(**over: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **over}


@pytest.fixture(scope="module")
def svc(hashing_embedder: Any, session_tmp: Path) -> Any:
    config = scripted_config(session_tmp / "claims-index", cache={"response_cache_url": "memory://"})
    from services.pipeline import build_cache

    return scripted_service(
        config, hashing_embedder, ScriptedEngine("Zorblat is the capital."), cache=build_cache(config)
    )


@pytest.fixture(scope="module")
def client(svc: Any) -> Iterator[TestClient]:
    with TestClient(create_app(svc)) as c:
        yield c


def test_stop_takes_at_most_four_strings(client: TestClient) -> None:
    assert client.post(CHAT, json=_ask(stop=["a", "b", "c", "d"], policy="none")).status_code == 200
    refused = client.post(CHAT, json=_ask(stop=["a", "b", "c", "d", "e"], policy="none"))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stop", refused.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/responses",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/rerank",
        "/v1/score",
        "/pooling",
        "/classify",
    ],
)
def test_endpoints_ragyard_does_not_serve_are_404s_in_openais_shape(client: TestClient, path: str) -> None:
    resp = client.post(path, json={"model": "auto", "input": "Hi"})
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "invalid_request_error", resp.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
        ("function_call", {"name": "f"}),
        ("web_search_options", {"search_context_size": "low"}),
        ("verbosity", "low"),
    ],
)
def test_the_legacy_and_hosted_fields_are_refused_by_name(client: TestClient, field: str, value: Any) -> None:
    resp = client.post(CHAT, json=_ask(**{field: value}))
    err = resp.json()["error"]
    assert resp.status_code == 400 and err["param"] == field and err["code"] == "unsupported_parameter", err


def test_fields_that_change_nothing_here_are_accepted(client: TestClient) -> None:
    ignored = {
        "user": "u-1",
        "metadata": {"k": "v"},
        "store": False,
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "safety_identifier": "s-1",
        "prompt_cache_key": "p-1",
    }
    plain = client.post(CHAT, json=_ask(policy="none", seed=1)).json()
    resp = client.post(CHAT, json=_ask(policy="none", seed=1, **ignored))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


def test_a_body_nested_past_max_json_depth_is_refused(svc: Any) -> None:
    """`server.max_json_depth` is the limit itself: a body at the limit passes the guard, one level more is
    a 400 before any parser recurses into it."""
    with TestClient(create_app(svc, max_json_depth=8)) as c:
        at_limit: Any = "x"
        for _ in range(6):  # the body object and `metadata` are two levels: 8 in all
            at_limit = [at_limit]
        assert c.post(CHAT, json=_ask(policy="none", metadata={"deep": at_limit})).status_code == 200
        refused = c.post(CHAT, json=_ask(policy="none", metadata={"deep": [at_limit]}))
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "json_too_deep", refused.text


def test_one_vector_store_by_id(client: TestClient) -> None:
    listed = client.get("/v1/vector_stores").json()["data"]
    assert listed, "the shared store is always listed"
    first = listed[0]
    one = client.get(f"/v1/vector_stores/{first['id']}")
    assert one.status_code == 200 and one.json() == first
    missing = client.get("/v1/vector_stores/no-such-store")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "vector_store_not_found"


def test_the_web_chat_can_be_switched_off(svc: Any) -> None:
    with TestClient(create_app(svc, web_chat=False)) as c:
        assert c.get("/").status_code == 404
    with TestClient(create_app(svc)) as c:
        assert c.get("/").status_code == 200 and "text/html" in c.get("/").headers["content-type"]


def test_logprobs_are_never_served_from_the_response_cache(client: TestClient) -> None:
    ask = _ask(policy="none", messages=[{"role": "user", "content": "Cache me, with logprobs?"}])
    client.post(CHAT, json=ask)
    assert client.post(CHAT, json=ask).json()["ragyard"]["cache"]["response"] == "hit"  # the plain one is cached
    with_logprobs = client.post(CHAT, json={**ask, "logprobs": True, "top_logprobs": 2})
    assert with_logprobs.status_code == 200, with_logprobs.text
    assert with_logprobs.json()["ragyard"]["cache"]["response"] != "hit"  # the one asking for logprobs is answered
