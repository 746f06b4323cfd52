"""The OpenAI surface, driven by the stock ``openai`` client over the HTTP edge of the library path (real
SmolLM2 on the torch engine, real embedder and FAISS; the client's HTTP goes through FastAPI's
TestClient): every field is honoured or refused by name, and /v1/completions, /v1/embeddings,
/tokenize, /detokenize and the vector store search answer in OpenAI's (or vLLM's) shapes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.http.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
NONE = {"policy": "none"}  # no retrieval: these tests are about the model call


@pytest.fixture(scope="module")
def client(local_service: Any) -> Iterator[TestClient]:
    with TestClient(create_app(local_service)) as c:
        yield c


@pytest.fixture(scope="module")
def oai(client: TestClient) -> Any:
    from openai import OpenAI

    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def _ask(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        ("tool_choice", "required"),
        ("logit_bias", {"42": 5}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "high"),
    ],
)
def test_fields_that_are_not_implemented_are_refused_by_name(oai: Any, field: str, value: Any) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as caught:
        oai.chat.completions.create(model="auto", messages=_ask("Hi"), max_tokens=4, **{field: value})
    err = caught.value.body
    assert caught.value.status_code == 400 and err["param"] == field and err["code"] == "unsupported_parameter", err


def test_defaults_clients_send_are_accepted(oai: Any) -> None:
    resp = oai.chat.completions.create(
        model="auto", messages=_ask("Hi"), max_tokens=4, tools=[], tool_choice="none", logprobs=False, extra_body=NONE
    )
    assert resp.choices[0].message.content is not None


def test_json_schema_response_format_is_honoured(oai: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    resp = oai.chat.completions.create(
        model=MODEL,
        messages=_ask("Name a large city and its population as JSON."),
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        extra_body=NONE,
    )
    out = json.loads(resp.choices[0].message.content)
    assert set(out) == {"city", "population"} and isinstance(out["population"], int), out
    assert resp.choices[0].finish_reason == "stop"


def test_json_object_response_format_streams_json(oai: Any) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=_ask("Give a JSON object with a name and an age of a person."),
        max_tokens=80,
        response_format={"type": "json_object"},
        stream=True,
        extra_body=NONE,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict), text


def test_a_bad_response_format_is_a_400(client: TestClient) -> None:
    body = {"model": MODEL, "messages": _ask("Hi"), "response_format": {"type": "json_schema"}}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "response_format", resp.text


def test_logprobs_are_each_tokens_with_its_alternatives(oai: Any) -> None:
    resp = oai.chat.completions.create(
        model=MODEL, messages=_ask("Say hello."), max_tokens=6, logprobs=True, top_logprobs=3, extra_body=NONE
    )
    tokens = resp.choices[0].logprobs.content
    assert len(tokens) == resp.usage.completion_tokens
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-6  # greedy: the chosen token is the likeliest
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token or not t.token.isprintable()
    # Streamed, the same tokens arrive with their deltas.
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=_ask("Say hello."),
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
        stream=True,
        extra_body=NONE,
    )
    streamed = [t.token for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert streamed == [t.token for t in tokens]


def test_top_logprobs_needs_logprobs(client: TestClient) -> None:
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": _ask("Hi"), "top_logprobs": 2})
    assert resp.status_code == 400 and "top_logprobs needs logprobs" in resp.json()["error"]["message"]


def test_penalties_change_the_answer(oai: Any) -> None:
    def answer(**extra: Any) -> str:
        resp = oai.chat.completions.create(
            model=MODEL,
            messages=_ask("Give a JSON object with a name and an age of a person."),
            max_tokens=40,
            extra_body=NONE,
            **extra,
        )
        return str(resp.choices[0].message.content)

    plain = answer()
    assert answer() == plain  # greedy: the same without penalties
    assert answer(frequency_penalty=2.0, presence_penalty=2.0) != plain


def test_completions_plain_and_streamed(oai: Any) -> None:
    resp = oai.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2
    )
    choice = resp.choices[0]
    assert resp.object == "text_completion" and choice.text and resp.usage.completion_tokens <= 6
    assert len(choice.logprobs.tokens) == resp.usage.completion_tokens
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    stream = oai.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens


def test_completions_refuse_what_they_do_not_do(oai: Any) -> None:
    from openai import BadRequestError

    for extra in ({"echo": True}, {"suffix": "end"}, {"best_of": 2}, {"prompt": [1, 2, 3]}):
        args = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, **extra}
        with pytest.raises(BadRequestError) as caught:
            oai.completions.create(**args)
        assert caught.value.body["param"] == next(iter(extra)), caught.value.body


def test_embeddings_are_the_retrievers_batched(oai: Any, local_service: Any) -> None:
    texts = ["Ragyard answers questions.", "FAISS holds the vectors."]
    # The openai client asks for base64 unless told otherwise, and decodes it.
    resp = oai.embeddings.create(model=EMBEDDER, input=texts)
    assert [d.index for d in resp.data] == [0, 1] and resp.model == EMBEDDER
    floats = oai.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    for a, b in zip(resp.data, floats.data, strict=True):
        assert len(a.embedding) == 384 and max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=True)) < 1e-6
        assert math.isclose(sum(x * x for x in a.embedding), 1.0, rel_tol=1e-4)
    assert resp.usage.prompt_tokens > 0
    import asyncio

    query = asyncio.run(local_service.retriever.embed(texts[0]))
    assert max(abs(x - y) for x, y in zip(query, floats.data[0].embedding, strict=True)) < 1e-5


def test_embeddings_refuse_other_models_and_dimensions(oai: Any) -> None:
    from openai import BadRequestError, NotFoundError

    with pytest.raises(NotFoundError):
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(BadRequestError) as caught:
        oai.embeddings.create(model=EMBEDDER, input="x", dimensions=128)
    assert caught.value.body["param"] == "dimensions"


def test_tokenize_and_detokenize_round_trip(client: TestClient, engine: Any) -> None:
    out = client.post("/tokenize", json={"model": MODEL, "prompt": "Hello world", "return_token_strs": True}).json()
    assert out["count"] == len(out["tokens"]) == len(out["token_strs"]) and out["max_model_len"] > 0
    back = client.post("/detokenize", json={"model": MODEL, "tokens": out["tokens"]}).json()
    assert back["prompt"] == "Hello world"
    chat = client.post("/tokenize", json={"model": "auto", "messages": _ask("Hi")}).json()
    from retrieval.generation import ChatMessage

    assert chat["count"] == engine.count_tokens(engine.render_chat([ChatMessage(role="user", content="Hi")]))
    bad = client.post("/detokenize", json={"model": MODEL, "tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    missing = client.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_vector_store_search_with_the_openai_client(oai: Any) -> None:
    stores = oai.vector_stores.list()
    assert [s.id for s in stores.data] == ["shared"] and stores.data[0].file_counts.completed > 0
    page = oai.vector_stores.search(vector_store_id="shared", query="How do I run the tests?", max_num_results=3)
    results = list(page)
    assert 0 < len(results) <= 3 and all(r.content[0].text for r in results)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_request_ids_are_kept_made_and_checked(client: TestClient) -> None:
    body = {"model": MODEL, "messages": _ask("Hi"), "max_tokens": 2, **NONE}
    given = client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "trace-me.42"})
    assert given.headers["x-request-id"] == "trace-me.42"
    made = client.post("/v1/chat/completions", json=body).headers["x-request-id"]
    assert len(made) == 32 and made != "trace-me.42"
    bad = client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "no spaces allowed"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request_id"
    assert client.get("/healthz").headers["x-request-id"]


def test_the_web_chat_page_and_the_policy_list(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers scripts
    assert "default-src 'self'" in page.headers["content-security-policy"] and "<title>Ragyard</title>" in page.text
    assert client.get("/web/app.js").status_code == 200 and client.get("/web/nope.js").status_code == 404
    names = [p["id"] for p in client.get("/v1/policies").json()["data"]]
    assert {"none", "single", "multi", "dragin", "adaptive"} <= set(names)


def test_an_invalid_json_schema_is_a_400_before_any_engine(client: TestClient) -> None:
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}},
    }
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": _ask("Hi"), "response_format": bad})
    assert resp.status_code == 400 and "not a valid JSON Schema" in resp.json()["error"]["message"], resp.text
    assert resp.json()["error"]["param"].startswith("response_format")
