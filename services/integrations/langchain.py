"""LangChain clients of a running Ragyard, over its HTTP API.

- `RagyardRetriever`: a ``BaseRetriever`` over ``POST /v1/vector_stores/{id}/search``; it searches the
  stores the API key may read (its tenant's namespace and the shared one) or those named, and returns
  langchain ``Document``s with the chunk's citation in their metadata.
- `ChatRagyard`: ``ChatOpenAI`` pointed at Ragyard, which keeps what the plain class drops: the answer's
  citations, plan (policy, model and the reason), timings and cache figures land in the message's
  ``response_metadata["ragyard"]`` (plain and streamed).
"""

from __future__ import annotations

from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_openai import ChatOpenAI
from pydantic import ConfigDict, Field

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class RagyardError(RuntimeError):
    """Ragyard answered with an error (its OpenAI-shaped message, status and code)."""

    def __init__(self, status: int, body: Any) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.code = err.get("code")
        self.param = err.get("param")
        super().__init__(f"Ragyard answered {status}: {err.get('message') or body}")


def _checked(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        raise RagyardError(resp.status_code, body)
    return resp.json()


class RagyardRetriever(BaseRetriever):
    """``RagyardRetriever(base_url="http://127.0.0.1:8000", api_key=...).invoke("question")``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_url: str = Field(DEFAULT_BASE_URL, description="The Ragyard server (without /v1).")
    api_key: str | None = Field(None, description="A tenant's or operator's key (Bearer); None on an open server.")
    vector_store_ids: list[str] | None = Field(None, description="Stores to search; None: every one the key reads.")
    k: int = Field(4, gt=0, le=50, description="Passages to return (over all stores searched).")
    score_threshold: float | None = Field(None, description="Drop passages scored below this.")
    timeout_s: float = Field(30.0, gt=0)
    http_client: Any = Field(None, description="An httpx.Client to send with (tests pass FastAPI's TestClient).")
    http_async_client: Any = Field(None, description="An httpx.AsyncClient for `ainvoke`.")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def _body(self, query: str) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "max_num_results": self.k}
        if self.score_threshold is not None:
            body["ranking_options"] = {"score_threshold": self.score_threshold}
        return body

    def _documents(self, pages: list[tuple[str, Any]]) -> list[Document]:
        hits = [(store, hit) for store, page in pages for hit in page["data"]]
        hits.sort(key=lambda sh: sh[1]["score"], reverse=True)
        return [
            Document(
                page_content="".join(c.get("text", "") for c in hit["content"]),
                metadata={
                    "document_id": hit["file_id"],
                    "title": hit["filename"],
                    "score": hit["score"],
                    "vector_store_id": store,
                    **hit.get("attributes", {}),
                },
            )
            for store, hit in hits[: self.k]
        ]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        client = self.http_client or httpx.Client(timeout=self.timeout_s)
        try:
            stores = self.vector_store_ids
            if stores is None:
                listed = _checked(client.get(self._url("/v1/vector_stores"), headers=self._headers()))
                stores = [s["id"] for s in listed["data"]]
            pages = [
                (
                    s,
                    _checked(
                        client.post(
                            self._url(f"/v1/vector_stores/{s}/search"), json=self._body(query), headers=self._headers()
                        )
                    ),
                )
                for s in stores
            ]
        finally:
            if self.http_client is None:
                client.close()
        return self._documents(pages)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        client = self.http_async_client or httpx.AsyncClient(timeout=self.timeout_s)
        try:
            stores = self.vector_store_ids
            if stores is None:
                listed = _checked(await client.get(self._url("/v1/vector_stores"), headers=self._headers()))
                stores = [s["id"] for s in listed["data"]]
            pages = []
            for s in stores:
                resp = await client.post(
                    self._url(f"/v1/vector_stores/{s}/search"), json=self._body(query), headers=self._headers()
                )
                pages.append((s, _checked(resp)))
        finally:
            if self.http_async_client is None:
                await client.aclose()
        return self._documents(pages)


class ChatRagyard(ChatOpenAI):
    """``ChatOpenAI`` against Ragyard: model ``auto`` by default; Ragyard's record of the answer (citations,
    plan and reason, timings, cache, SLA) in ``response_metadata["ragyard"]``. Ragyard's own request fields
    (``policy``, ``top_k``, ``style``) go in ``extra_body``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("model", "auto")
        kwargs.setdefault("base_url", DEFAULT_BASE_URL + "/v1")
        kwargs.setdefault("api_key", "none")  # an open server takes any key; ChatOpenAI insists on one
        super().__init__(**kwargs)

    def _create_chat_result(self, response: Any, generation_info: dict[str, Any] | None = None) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        # Ragyard's field is an extra of the openai client's response model (a dict when raw).
        extension = (
            response.get("ragyard") if isinstance(response, dict) else (response.model_extra or {}).get("ragyard")
        )
        if extension is not None:
            for generation in result.generations:
                generation.message.response_metadata["ragyard"] = extension
        return result

    def _convert_chunk_to_generation_chunk(
        self, chunk: dict[str, Any], default_chunk_class: type, base_generation_info: dict[str, Any] | None
    ) -> ChatGenerationChunk | None:
        out = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
        extension = chunk.get("ragyard")
        if out is not None and extension is not None:
            # The stream's last content chunk carries the record; merging the chunks keeps it.
            out.message.response_metadata["ragyard"] = extension
        return out
