"""The HTTP edge over the library path (FastAPI TestClient, real model and index, no Ray)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retrieval.generation import ChatMessage
from services.http.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.model]

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def client(local_service: Any) -> Iterator[TestClient]:
    with TestClient(create_app(local_service, max_body_bytes=64 * 1024)) as c:
        yield c


def _chat(content: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


def _assert_openai_error(resp: Any, status: int, fragment: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert fragment in err["message"], err
    return err  # type: ignore[no-any-return]


def test_health_ready_models(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["retriever"]["documents"] > 0
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["auto", "smollm2-135m-instruct", "all-minilm-l6-v2"]


def test_usage_is_exact(client: TestClient, local_service: Any, engine: Any) -> None:
    body = _chat("Say something.", max_tokens=6, policy="none", temperature=0.7, seed=3)
    resp = client.post(CHAT, json=body).json()
    from retrieval.prompts import build_messages

    prompt = engine.render_chat(build_messages("Say something.", None))
    usage = resp["usage"]
    assert usage["prompt_tokens"] == engine.count_tokens(prompt)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if resp["choices"][0]["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6


def test_non_streamed_chat(client: TestClient) -> None:
    resp = client.post(CHAT, json=_chat(max_tokens=12))
    assert resp.status_code == 200
    data = resp.json()
    assert data["object"] == "chat.completion" and data["model"] == "smollm2-135m-instruct"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["choices"][0]["message"]["content"]
    assert data["ragyard"]["plan"]["policy"] == "single"


def test_streamed_chat_with_usage_chunk(client: TestClient) -> None:
    body = _chat("Name a colour.", stream=True, stream_options={"include_usage": True}, temperature=0.5, seed=1)
    with client.stream("POST", CHAT, json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and text
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])


def test_qa_returns_answer_citations_plan_timings(client: TestClient) -> None:
    resp = client.post("/v1/qa", json={"question": "Which engine is the embedded default?", "max_tokens": 24})
    assert resp.status_code == 200, resp.text
    rec = resp.json()
    assert rec["answer"]
    assert rec["citations"] and {"document_id", "title", "chunk", "score"} <= set(rec["citations"][0])
    assert rec["plan"]["policy"] == "single" and "reason" in rec["plan"]
    assert {"retrieve_s", "prefill_s", "decode_s", "total_s"} <= set(rec["timings"])


def test_plan_explains_without_answering(client: TestClient) -> None:
    from services import metrics

    generated = metrics.TOKENS.labels("smollm2-135m-instruct", "completion").value()
    body = {"question": "Which engine is the embedded default?", "policy": "adaptive", "max_tokens": 24}
    resp = client.post("/v1/plan", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "qa.plan" and out["model"] == "smollm2-135m-instruct" and "answer" not in out
    plan = out["plan"]
    assert plan["policy"] == "adaptive" and plan["complexity"]["class"] in ("A", "B", "C")
    assert plan["complexity"]["policy"] in ("none", "single", "multi") and plan["reason"]
    assert out["sampling"]["max_tokens"] == 24
    assert metrics.TOKENS.labels("smollm2-135m-instruct", "completion").value() == generated
    # What /v1/qa then runs is that plan.
    ran = client.post("/v1/qa", json=body).json()
    assert ran["plan"]["complexity"]["policy"] == plan["complexity"]["policy"]
    _assert_openai_error(client.post("/v1/plan", json={**body, "policy": "psychic"}), 400, "unknown retrieval policy")
    _assert_openai_error(client.post("/v1/plan", json={**body, "model": "gpt-9"}), 404, "does not exist")
    _assert_openai_error(client.post("/v1/plan", json={"question": " "}), 400, "empty")


def test_repeated_greedy_question_hits_the_response_cache(client: TestClient) -> None:
    body = {"question": "What does make test do?", "max_tokens": 8}
    first = client.post("/v1/qa", json=body).json()
    second = client.post("/v1/qa", json=body).json()
    assert second["cache"]["response"] == "hit" and second["answer"] == first["answer"]
    sampled = client.post("/v1/qa", json={**body, "temperature": 0.8}).json()
    assert sampled["cache"]["response"] == "bypass"


def test_documents_are_searchable_at_once_and_not_duplicated(client: TestClient) -> None:
    doc = {"title": "Quux", "text": "Zorblat is the capital of the kingdom of Quux. Its river is the Lim."}
    first = client.post("/v1/documents", json={"documents": [doc]}).json()
    assert len(first["added"]) == 1
    again = client.post("/v1/documents", json={"documents": [doc]}).json()
    assert again["added"] == [] and again["unchanged"] == first["added"]
    rec = client.post("/v1/qa", json={"question": "What is the capital of Quux?", "max_tokens": 16}).json()
    assert rec["citations"][0]["title"] == "Quux"
    md = client.post(
        "/v1/documents?id=notes",
        content=b"# Notes\n\nThe Lim river floods in May.",
        headers={"content-type": "text/markdown"},
    ).json()
    assert md["added"] == ["notes"]
    jl = client.post(
        "/v1/documents",
        content=b'{"question": "q", "answers": ["a"], "contexts": '
        b'[{"title": "Lim", "text": "The Lim is 40 km long."}]}\n',
        headers={"content-type": "application/x-ndjson"},
    ).json()
    assert len(jl["added"]) == 1


def test_a_write_returns_its_corpus_generation_and_a_read_may_ask_for_it(client: TestClient) -> None:
    resp = client.post("/v1/documents", json={"documents": [{"id": "gen-doc", "text": "The Lim bridge is red."}]})
    generation = int(resp.headers["x-ragyard-generation"])
    assert resp.json()["generation"] == generation >= 1
    asked = {"x-ragyard-min-generation": str(generation)}
    listed = client.get("/v1/documents", headers=asked).json()
    assert "gen-doc" in [d["id"] for d in listed["data"]]
    qa = client.post("/v1/qa", json={"question": "What colour is the Lim bridge?", "max_tokens": 8}, headers=asked)
    assert qa.status_code == 200
    # A generation no write returned, and one that is not a number, are the client's mistakes.
    ahead = client.get("/v1/documents", headers={"x-ragyard-min-generation": str(generation + 1000)})
    assert ahead.status_code == 400 and ahead.json()["error"]["code"] == "invalid_min_generation"
    bad = client.post("/v1/qa", json={"question": "q", "max_tokens": 8}, headers={"x-ragyard-min-generation": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-ragyard-min-generation"
    gone = client.delete("/v1/documents/gen-doc")
    assert int(gone.headers["x-ragyard-generation"]) == generation + 1 == gone.json()["generation"]


BAD_CHAT = [
    (b"{", 400, "not valid JSON"),
    (b'{"model": "auto"}', 400, "messages: field required"),
    (b'{"model": "auto", "messages": []}', 400, "messages"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "model 'nope' does not exist"),
    (b'{"model": "auto", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0.role"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": 5}]}', 400, "content must be a string"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "max_tokens"),
    (
        b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999}',
        400,
        "over this model's limit",
    ),
    (b'{"model": "auto", "messages": [{"role": "assistant", "content": "hi"}]}', 400, "last message must"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "  "}]}', 400, "empty"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "n:"),
    (
        b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "policy": "psychic"}',
        400,
        "unknown retrieval policy",
    ),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "top_k": 500}', 400, "top_k"),
]


@pytest.mark.parametrize(("body", "status", "fragment"), BAD_CHAT)
def test_bad_chat_requests(client: TestClient, body: bytes, status: int, fragment: str) -> None:
    resp = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    _assert_openai_error(resp, status, fragment)


def test_bad_qa_documents_and_size(client: TestClient) -> None:
    _assert_openai_error(client.post("/v1/qa", json={"question": "   "}), 400, "question is empty")
    _assert_openai_error(client.post("/v1/qa", json={}), 400, "question: field required")
    _assert_openai_error(client.post("/v1/qa", json={"question": "q", "max_tokens": -1}), 400, "max_tokens")
    big = json.dumps({"question": "x" * (70 * 1024)}).encode()
    _assert_openai_error(
        client.post("/v1/qa", content=big, headers={"content-type": "application/json"}), 413, "over the limit"
    )
    _assert_openai_error(
        client.post("/v1/documents", json={"documents": [{"text": "x", "type": "rtf"}]}),
        415,
        "unsupported document type",
    )
    _assert_openai_error(
        client.post("/v1/documents", content=b"{\\rtf1 x}", headers={"content-type": "application/rtf"}),
        415,
        "unsupported content type",
    )
    # A PDF is read from its bytes: JSON cannot carry one, and a PDF cut after its header is refused by name.
    _assert_openai_error(
        client.post("/v1/documents", json={"documents": [{"text": "x", "type": "pdf"}]}),
        400,
        "send it as its own content type",
    )
    _assert_openai_error(
        client.post("/v1/documents", content=b"%PDF-1.4", headers={"content-type": "application/pdf"}),
        400,
        "the PDF is damaged or truncated",
    )
    _assert_openai_error(
        client.post("/v1/documents", content=b"{bad\n", headers={"content-type": "application/jsonl"}), 400, "line 1"
    )
    _assert_openai_error(client.post("/v1/documents", json={"documents": []}), 400, "documents")
    _assert_openai_error(client.get("/v1/nothing"), 404, "no route")
    _assert_openai_error(client.get(CHAT), 405, "not allowed")


def test_prompt_over_the_context_is_a_400(client: TestClient) -> None:
    long_question = "word " * 1550
    _assert_openai_error(client.post("/v1/qa", json={"question": long_question, "max_tokens": 4}), 400, "prompt tokens")
    body = _chat(long_question, stream=True)
    with client.stream("POST", CHAT, json=body) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "context_length_exceeded"


def test_service_still_answers_after_bad_input(client: TestClient) -> None:
    for body, _, _ in BAD_CHAT:
        client.post(CHAT, content=body, headers={"content-type": "application/json"})
    ok = client.post(CHAT, json=_chat(max_tokens=8))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    assert client.get("/readyz").status_code == 200


def test_metrics_expose_routes_plans_ttft_tokens(client: TestClient) -> None:
    client.post(CHAT, json=_chat(max_tokens=4))
    text = client.get("/metrics").text
    for name in (
        "ragyard_http_requests_total",
        "ragyard_http_request_seconds_bucket",
        "ragyard_plan_seconds_bucket",
        "ragyard_ttft_seconds_bucket",
        "ragyard_tokens_total",
        "ragyard_stage_seconds_bucket",
    ):
        assert name in text
    assert 'route="/v1/chat/completions"' in text and 'model="smollm2-135m-instruct",policy="single"' in text


def test_api_keys_when_configured(local_service: Any) -> None:
    with TestClient(create_app(local_service, api_keys=["sekrit"])) as c:
        _assert_openai_error(c.get("/v1/models"), 401, "API key")
        assert c.get("/v1/models", headers={"Authorization": "Bearer sekrit"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_chat_history_and_system_reach_the_prompt(local_service: Any) -> None:
    from services.http.openai import chat_to_answer as _chat_to_answer
    from services.http.schemas import ChatCompletionRequest

    req = _chat_to_answer(
        ChatCompletionRequest.model_validate(
            {
                "model": "auto",
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "Who "}, {"type": "text", "text": "are you?"}],
                    },
                ],
            }
        )
    )
    assert req.question.text == "Who are you?" and req.question.system == "Be terse."
    assert req.question.history == [
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content="Hello"),
    ]
