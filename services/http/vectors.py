"""Retrieval as an API: ``/v1/embeddings`` (the retriever's embedder, batched) and OpenAI's vector store
routes over the tenant's namespaces: ``GET /v1/vector_stores`` (the stores this key may read: its own
namespace and the shared one), ``GET /v1/vector_stores/{id}`` and ``POST /v1/vector_stores/{id}/search``.

A vector store here is a document namespace: its id is the namespace's name. Stores are made by writing
documents (``POST /v1/documents``), not through OpenAI's file and store creation routes."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from retrieval.answering import Ran
from retrieval.documents import SHARED_NAMESPACE
from router.errors import UnknownModelError
from router.routing import AUTO_MODEL
from services.errors import InvalidRequestError, NotFoundError
from services.http.auth import Principal, principal
from services.http.deps import Service, min_generation
from services.http.schemas import EmbeddingRequest, VectorStoreSearchRequest
from services.pipeline.service import RagService
from services.pipeline.work_budget import work_budget

router = APIRouter()


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or its little-endian float32 bytes in base64.")


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


class FileCounts(BaseModel):
    """The store's documents, as OpenAI counts a store's files (every stored document is completed)."""

    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class StoreExtension(BaseModel):
    chunks: int = 0
    shared: bool = Field(description="Whether this is the shared namespace every key reads.")


class VectorStore(BaseModel):
    """A document namespace in the shape of OpenAI's vector store object."""

    id: str
    object: Literal["vector_store"] = "vector_store"
    name: str
    created_at: int = 0  # namespaces are not created; they hold documents or not
    status: Literal["completed"] = "completed"
    usage_bytes: int = 0
    file_counts: FileCounts = Field(default_factory=FileCounts)
    metadata: dict[str, str] = Field(default_factory=dict)
    expires_after: None = None
    expires_at: None = None
    last_active_at: None = None
    ragyard: StoreExtension

    @classmethod
    def named(cls, name: str) -> VectorStore:
        return cls(id=name, name=name, ragyard=StoreExtension(shared=name == SHARED_NAMESPACE))


class VectorStoreList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VectorStore]
    first_id: str | None
    last_id: str | None
    has_more: bool = False


class ChunkAttributes(BaseModel):
    chunk: int
    source: str
    namespace: str
    page: int | None = None  # the page the chunk begins on, for a document with pages (PDF)


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class SearchResult(BaseModel):
    file_id: str
    filename: str
    score: float
    attributes: ChunkAttributes
    content: list[TextContent]


class SearchPage(BaseModel):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[SearchResult]
    has_more: bool = False
    next_page: None = None


# More tokens than the embedder reads of one input (all-MiniLM-L6-v2 truncates at 256).
EMBED_TOKENS_PER_INPUT = 512


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, svc: Service) -> EmbeddingList:
    model_id = svc.config.embedder.id
    if body.model not in (model_id, AUTO_MODEL):
        raise UnknownModelError(f"unknown embedding model {body.model!r}; this server embeds with {model_id!r}")
    texts = body.texts()
    # A tenant with a budget pays for its embeddings as for its answers: the worst case is reserved first (a
    # token is at least one character, plus the two special ones; the embedder reads at most 512 of one input and
    # refuses a request over its per-request cap with a 400), what was embedded is charged after, and a request
    # that failed is charged nothing. Counted here, not by the retriever: no second round trip, and no second
    # pass of the tokenizer under the embedder's lock, which a concurrent small request would wait behind.
    who = principal(request)
    cap = svc.config.embedder.max_tokens_per_request
    worst = min(cap, sum(min(len(t) + 2, EMBED_TOKENS_PER_INPUT) for t in texts))
    async with work_budget(svc.router, who.tenant, model_id, worst, "emb") as spend:
        out = await svc.retriever.embed_many(texts)
        spend.tokens = sum(out["tokens"])
    if body.dimensions is not None and body.dimensions != out["dim"]:
        raise InvalidRequestError(
            f"dimensions {body.dimensions}: {model_id} embeds in {out['dim']} dimensions only", param="dimensions"
        )

    def encode(vector: list[float]) -> list[float] | str:
        if body.encoding_format == "float":
            return vector
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")

    tokens = sum(out["tokens"])
    request.state.ran = Ran(prompt_tokens=tokens)  # what the rate limiter counts against TPM
    return EmbeddingList(
        model=model_id,
        data=[Embedding(index=i, embedding=encode(v)) for i, v in enumerate(out["vectors"])],
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _readable(who: Principal) -> list[str]:
    return list(who.readable)


async def _stores(svc: RagService, who: Principal, request: Request) -> dict[str, VectorStore]:
    """The stores this principal may read, with their document and chunk counts. An operator sees every
    namespace that holds documents (and the shared one)."""
    names = None if who.operator else _readable(who)
    docs = await svc.retriever.documents(names, min_generation(request))
    stores = {n: VectorStore.named(n) for n in (names or [SHARED_NAMESPACE])}
    for d in docs:
        store = stores.setdefault(d["namespace"], VectorStore.named(d["namespace"]))
        store.file_counts.completed += 1
        store.file_counts.total += 1
        store.ragyard.chunks += d["chunks"]
    return stores


@router.get("/v1/vector_stores")
async def list_vector_stores(request: Request, svc: Service) -> VectorStoreList:
    stores = sorted((await _stores(svc, principal(request), request)).values(), key=lambda s: s.id)
    return VectorStoreList(
        data=stores,
        first_id=stores[0].id if stores else None,
        last_id=stores[-1].id if stores else None,
    )


async def _one(svc: RagService, request: Request, store_id: str) -> VectorStore:
    who = principal(request)
    stores = await _stores(svc, who, request)
    if store_id not in stores:
        # Another tenant's store is not found: its existence is not this caller's business.
        raise NotFoundError(f"no vector store {store_id!r}", param="vector_store_id", code="vector_store_not_found")
    return stores[store_id]


@router.get("/v1/vector_stores/{store_id}")
async def get_vector_store(store_id: str, request: Request, svc: Service) -> VectorStore:
    return await _one(svc, request, store_id)


@router.post("/v1/vector_stores/{store_id}/search")
async def search_vector_store(
    store_id: str, body: VectorStoreSearchRequest, request: Request, svc: Service
) -> SearchPage:
    await _one(svc, request, store_id)
    query = body.text()
    passages = await svc.retriever.search(query, body.max_num_results, [store_id], min_generation(request))
    threshold = body.score_threshold()
    return SearchPage(
        search_query=[query],
        data=[
            SearchResult(
                file_id=p.chunk.doc_id,
                filename=p.chunk.title or p.chunk.doc_id,
                score=round(float(p.score), 6),
                attributes=ChunkAttributes(
                    chunk=p.chunk.chunk_index, source=p.chunk.source, namespace=store_id, page=p.chunk.page or None
                ),
                content=[TextContent(text=p.chunk.text)],
            )
            for p in passages
            if p.score >= threshold
        ],
    )
