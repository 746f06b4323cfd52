"""How the pipeline reaches the retriever, the workers and the router: the protocols it calls, and their
in-process clients (the library path: `ragyard ask`, the benchmarks, the tests). Over Serve the same protocols
are met by `services.serve.handles`, so the pipeline never knows which."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, cast

from core.chunks import PromptChunk
from retrieval.documents import CorpusStats, DocKey, Document, DocumentSummary, IngestResult, Passage
from retrieval.generation import (
    ChatMessage,
    GenerationChunk,
    GenerationResult,
    Precompute,
    SamplingParams,
    SignalResult,
)
from router.plan import Outcome, RouteDecision, RouteRequest, Settlement
from services.deployments.retriever import Embeddings, Readiness, Removal
from services.deployments.worker import Detokenized, Tokens


class RetrieverClient(Protocol):
    """``min_generation``: answer only from a replica that holds at least that corpus generation (the one an
    ingest returned), so a writer reads its writes whichever replica answers."""

    async def search(
        self, query: str, k: int, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> list[Passage]: ...

    async def embed(self, text: str) -> list[float]: ...

    async def embed_many(self, texts: list[str]) -> Embeddings: ...

    async def ingest(self, docs: list[Document]) -> IngestResult: ...

    async def chunk_bodies(self, keys: list[DocKey] | None = None) -> list[PromptChunk]: ...

    async def remove(self, doc_id: str, namespace: str | None = None) -> Removal: ...

    async def documents(
        self, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> list[DocumentSummary]: ...

    async def document(
        self, doc_id: str, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> DocumentSummary: ...

    async def fingerprints(self, keys: list[DocKey], min_generation: int = 0) -> list[str | None]: ...

    async def support_vectors(
        self, sentences: list[str], chunks: list[tuple[str, str, int]]
    ) -> tuple[list[list[float]], list[list[float] | None]]: ...

    async def stats(self, min_generation: int = 0) -> CorpusStats: ...

    async def ready(self) -> Readiness: ...


class WorkerClient(Protocol):
    async def generate(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[PromptChunk] | None = None,
    ) -> GenerationResult: ...

    def stream(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[PromptChunk] | None = None,
    ) -> AsyncIterator[GenerationChunk]: ...

    async def generate_with_signals(
        self, messages: list[ChatMessage], params: SamplingParams, assistant_prefix: str = ""
    ) -> SignalResult: ...

    async def tokenize(self, text: str | list[ChatMessage], add_special_tokens: bool = True) -> Tokens: ...

    async def detokenize(self, tokens: list[int]) -> Detokenized: ...

    async def ready(self) -> dict[str, Any]: ...

    async def metrics_text(self) -> str: ...

    async def precompute(self, chunks: list[PromptChunk]) -> Precompute: ...


class RouterClient(Protocol):
    async def route(self, request: RouteRequest) -> RouteDecision: ...

    async def needs_embedding(self, policy: str | None, model: str | None = None) -> bool: ...

    async def finish(self, ticket: str, outcome: Outcome) -> Settlement | None: ...

    async def reserve_work(self, tenant: str | None, ticket: str, model: str, worst_tokens: int) -> bool: ...

    async def settle_work(self, ticket: str, model: str, tokens: int) -> None: ...

    async def sla(self, tenant: str | None = None) -> dict[str, Any]: ...

    async def metrics_text(self) -> str: ...

    async def ready(self) -> dict[str, Any]: ...


class InProcess:
    """A deployment's plain object (`services.deployments`) met as its client protocol in this process: every
    method can be awaited (a plain method's result comes back as it is), a streaming one is iterated as it is.
    ``overrides`` replace methods by name. Written by hand: the in-process half of the two ways each protocol
    is met (`services.serve.handles.Remote` is the other), a dozen lines no library offers."""

    def __init__(self, target: Any, **overrides: Callable[..., Any]) -> None:
        self.target = target
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        method = self._overrides.get(name) or getattr(self.target, name)
        if inspect.isasyncgenfunction(method):
            return method

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            return await out if inspect.isawaitable(out) else out

        return call


def local_retriever(service: Any) -> RetrieverClient:
    return cast(RetrieverClient, InProcess(service))


def local_worker(worker: Any) -> WorkerClient:
    # Same process: the engine's metric families are in this process's registry already.
    return cast(
        WorkerClient, InProcess(worker, metrics_text=functools.partial(worker.metrics_text, include_engine=False))
    )


def local_router(service: Any) -> RouterClient:
    return cast(RouterClient, InProcess(service))
