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

from services.gateway import create_app
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
