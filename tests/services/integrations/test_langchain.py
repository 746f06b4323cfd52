"""LangChain against a served Ragyard (the HTTP edge of the library path: real SmolLM2, embedder and
FAISS; the clients' HTTP goes through FastAPI's TestClient): `RagyardRetriever` searches the vector store
API, `ChatRagyard` keeps citations and the plan in ``response_metadata``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.http.app import create_app
from services.integrations.langchain import ChatRagyard, RagyardError, RagyardRetriever

pytestmark = [pytest.mark.integration, pytest.mark.model]

QUESTION = "How do I run the Ragyard tests?"


@pytest.fixture(scope="module")
def client(local_service: Any) -> Iterator[TestClient]:
    with TestClient(create_app(local_service)) as c:
        yield c


def test_the_retriever_searches_the_served_vector_stores(client: TestClient) -> None:
    docs = RagyardRetriever(base_url="http://testserver", http_client=client, k=3).invoke(QUESTION)
    assert 0 < len(docs) <= 3
    assert all(d.page_content and d.metadata["vector_store_id"] == "shared" for d in docs)
    assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)
    named = RagyardRetriever(base_url="http://testserver", http_client=client, vector_store_ids=["shared"], k=3)
    assert [d.metadata["document_id"] for d in named.invoke(QUESTION)] == [d.metadata["document_id"] for d in docs]


def test_the_retriever_async_path_and_errors(client: TestClient) -> None:
    transport = httpx.ASGITransport(app=client.app)

    async def run() -> list[Any]:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            retriever = RagyardRetriever(base_url="http://testserver", http_async_client=http, k=2)
            return await retriever.ainvoke(QUESTION)

    assert len(asyncio.run(run())) == 2
    missing = RagyardRetriever(base_url="http://testserver", http_client=client, vector_store_ids=["nobody"])
    with pytest.raises(RagyardError) as caught:
        missing.invoke(QUESTION)
    assert caught.value.status == 404 and caught.value.code == "vector_store_not_found"


def test_chat_ragyard_keeps_citations_and_the_plan(client: TestClient) -> None:
    chat = ChatRagyard(
        base_url="http://testserver/v1", http_client=client, max_tokens=16, extra_body={"policy": "single"}
    )
    msg = chat.invoke(QUESTION)
    assert msg.content
    ragyard = msg.response_metadata["ragyard"]
    assert ragyard["plan"]["policy"] == "single" and ragyard["plan"]["reason"]
    assert ragyard["citations"] and all(c["text"] for c in ragyard["citations"])
    assert msg.usage_metadata["output_tokens"] > 0
    # Streamed: the merged chunks carry the same record.
    merged = None
    for chunk in chat.stream(QUESTION):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and merged.content
    assert merged.response_metadata["ragyard"]["plan"]["policy"] == "single"
    assert merged.response_metadata["ragyard"]["citations"]


def test_langchain_drives_the_rest_of_the_surface(client: TestClient, engine: Any) -> None:
    """What a LangChain user reaches through langchain-openai's own classes: structured output, logprobs,
    penalties, a refused tool, legacy completions and embeddings."""
    from langchain_openai import OpenAI, OpenAIEmbeddings
    from openai import BadRequestError
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    chat = ChatRagyard(
        base_url="http://testserver/v1", http_client=client, max_tokens=60, extra_body={"policy": "none"}
    )
    person = chat.with_structured_output(Person, method="json_schema").invoke(
        "Give a JSON object with a name and an age of a person."
    )
    assert isinstance(person, Person) and person.name
    scored = chat.bind(logprobs=True, top_logprobs=2, max_tokens=6).invoke("Say hello.")
    tokens = scored.response_metadata["logprobs"]["content"]
    assert len(tokens) == scored.usage_metadata["output_tokens"] and all(len(t["top_logprobs"]) == 2 for t in tokens)
    plain = chat.invoke("Give a JSON object with a name and an age of a person.").content
    penalised = ChatRagyard(
        base_url="http://testserver/v1",
        http_client=client,
        max_tokens=60,
        frequency_penalty=2.0,
        presence_penalty=2.0,
        extra_body={"policy": "none"},
    ).invoke("Give a JSON object with a name and an age of a person.")
    assert penalised.content != plain

    def lookup(city: str) -> str:
        """Look a city up."""
        return city

    with pytest.raises(BadRequestError) as caught:
        chat.bind_tools([lookup]).invoke("Where is Paris?")
    assert caught.value.body["param"] == "tools" and caught.value.body["code"] == "unsupported_parameter"

    llm = OpenAI(
        model="smollm2-135m-instruct",
        base_url="http://testserver/v1",
        api_key="none",
        http_client=client,
        max_tokens=5,
        temperature=0,
    )
    assert llm.invoke("The capital of France is").strip()
    # langchain-openai's embeddings send tiktoken ids unless told not to; Ragyard's embedder reads text.
    vectors = OpenAIEmbeddings(
        model="all-minilm-l6-v2",
        base_url="http://testserver/v1",
        api_key="none",
        http_client=client,
        check_embedding_ctx_length=False,
    ).embed_documents(["first text", "second text"])
    assert [len(v) for v in vectors] == [384, 384]
