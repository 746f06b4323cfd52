"""How the gateway reaches the retriever and the workers: in-process objects (the library path) or
Serve DeploymentHandles. Both expose the same async surface, so the QA logic never knows which."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from retrieval.documents import Document, Passage
from retrieval.generation import ChatMessage, GenerationChunk, GenerationResult, SamplingParams, SignalResult
from router.plan import Outcome, RouteDecision, Settlement

logger = logging.getLogger(__name__)


class RetrieverClient(Protocol):
    """``min_generation``: answer only from a replica that holds at least that corpus generation (the one an
    ingest returned), so a writer reads its writes whichever replica answers."""

    async def search(
        self, query: str, k: int, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> list[Passage]: ...

    async def embed(self, text: str) -> list[float]: ...

    async def embed_many(self, texts: list[str]) -> dict[str, Any]: ...

    async def ingest(self, docs: list[Document]) -> dict[str, Any]: ...

    async def chunk_bodies(self, doc_ids: list[str] | None = None) -> list[str]: ...

    async def remove(self, doc_id: str, namespace: str | None = None) -> dict[str, Any]: ...

    async def documents(self, namespaces: list[str] | None = None, min_generation: int = 0) -> list[dict[str, Any]]: ...

    async def document(
        self, doc_id: str, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> dict[str, Any]: ...

    async def stats(self, min_generation: int = 0) -> dict[str, Any]: ...

    async def ready(self) -> dict[str, Any]: ...


class WorkerClient(Protocol):
    async def generate(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[str] | None = None,
    ) -> GenerationResult: ...

    def stream(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[str] | None = None,
    ) -> AsyncIterator[GenerationChunk]: ...

    async def generate_with_signals(
        self, messages: list[ChatMessage], params: SamplingParams, assistant_prefix: str = ""
    ) -> SignalResult: ...

    async def tokenize(self, text: str | list[ChatMessage], add_special_tokens: bool = True) -> dict[str, Any]: ...

    async def detokenize(self, tokens: list[int]) -> dict[str, Any]: ...

    async def ready(self) -> dict[str, Any]: ...

    async def metrics_text(self) -> str: ...

    async def precompute(self, texts: list[str]) -> dict[str, Any]: ...


class RouterClient(Protocol):
    async def route(self, question: str, **choices: Any) -> RouteDecision: ...

    async def needs_embedding(self, policy: str | None, model: str | None = None) -> bool: ...

    async def finish(self, ticket: str, outcome: Outcome) -> Settlement | None: ...

    async def sla(self, tenant: str | None = None) -> dict[str, Any]: ...

    async def metrics_text(self) -> str: ...

    async def ready(self) -> dict[str, Any]: ...


class LocalRouter:
    def __init__(self, service: Any) -> None:
        self.service = service

    async def route(self, question: str, **choices: Any) -> RouteDecision:
        return await self.service.route(question, **choices)

    async def needs_embedding(self, policy: str | None, model: str | None = None) -> bool:
        return self.service.needs_embedding(policy, model)

    async def finish(self, ticket: str, outcome: Outcome) -> Settlement | None:
        return await self.service.finish(ticket, outcome)

    async def sla(self, tenant: str | None = None) -> dict[str, Any]:
        return await self.service.sla(tenant)

    async def metrics_text(self) -> str:
        return self.service.metrics_text()

    async def ready(self) -> dict[str, Any]:
        return self.service.ready()


class HandleRouter:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def route(self, question: str, **choices: Any) -> RouteDecision:
        # A retry after the router died may leave the first try's reservation open: its lease releases it.
        return await once_more(self.handle.route, question, **choices)

    async def needs_embedding(self, policy: str | None, model: str | None = None) -> bool:
        return await once_more(self.handle.needs_embedding, policy, model)

    async def finish(self, ticket: str, outcome: Outcome) -> Settlement | None:
        return await once_more(self.handle.finish, ticket, outcome)  # settling is idempotent per ticket

    async def sla(self, tenant: str | None = None) -> dict[str, Any]:
        return await self.handle.sla.remote(tenant)

    async def metrics_text(self) -> str:
        return await self.handle.metrics_text.remote()

    async def ready(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.handle.ready.remote(), timeout=5.0)


class LocalRetriever:
    def __init__(self, service: Any) -> None:
        self.service = service

    async def search(
        self, query: str, k: int, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> list[Passage]:
        return await self.service.search(query, k, namespaces, min_generation)

    async def embed(self, text: str) -> list[float]:
        return await self.service.embed(text)

    async def embed_many(self, texts: list[str]) -> dict[str, Any]:
        return await self.service.embed_many(texts)

    async def ingest(self, docs: list[Document]) -> dict[str, Any]:
        return await self.service.ingest(docs)

    async def chunk_bodies(self, doc_ids: list[str] | None = None) -> list[str]:
        return await self.service.chunk_bodies(doc_ids)

    async def remove(self, doc_id: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.service.remove(doc_id, namespace)

    async def documents(self, namespaces: list[str] | None = None, min_generation: int = 0) -> list[dict[str, Any]]:
        return await self.service.documents(namespaces, min_generation)

    async def document(
        self, doc_id: str, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> dict[str, Any]:
        return await self.service.document(doc_id, namespaces, min_generation)

    async def stats(self, min_generation: int = 0) -> dict[str, Any]:
        return await self.service.stats(min_generation)

    async def ready(self) -> dict[str, Any]:
        return self.service.ready()


class LocalWorker:
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    async def generate(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[str] | None = None,
    ) -> GenerationResult:
        return await self.worker.generate(messages, params, assistant_prefix, chunks)

    def stream(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[str] | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        return self.worker.stream(messages, params, assistant_prefix, chunks)

    async def generate_with_signals(
        self, messages: list[ChatMessage], params: SamplingParams, assistant_prefix: str = ""
    ) -> SignalResult:
        return await self.worker.generate_with_signals(messages, params, assistant_prefix)

    async def tokenize(self, text: str | list[ChatMessage], add_special_tokens: bool = True) -> dict[str, Any]:
        return dict(self.worker.tokenize(text, add_special_tokens))

    async def detokenize(self, tokens: list[int]) -> dict[str, Any]:
        return dict(self.worker.detokenize(tokens))

    async def ready(self) -> dict[str, Any]:
        return self.worker.ready()

    async def metrics_text(self) -> str:
        # Same process: the engine's families are in this process's registry already.
        return str(self.worker.metrics_text(include_engine=False))

    async def precompute(self, texts: list[str]) -> dict[str, Any]:
        return dict(self.worker.precompute(texts))


async def once_more(method: Any, *args: Any, **kwargs: Any) -> Any:
    """``method.remote(*args, **kwargs)``, sent again once when the replica that took it died or went away: Serve
    routes the retry to a live replica. Only for calls that may run twice (reads, and generation that is
    not streamed: nothing of it reached the client)."""
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError

    try:
        return await method.remote(*args, **kwargs)
    except (RayActorError, ActorUnavailableError, ReplicaUnavailableError) as exc:
        logger.warning(
            "a replica went away during %s (%s); retrying once", getattr(method, "_method_name", "a call"), exc
        )
        return await method.remote(*args, **kwargs)


class HandleRetriever:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def search(
        self, query: str, k: int, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> list[Passage]:
        return await once_more(self.handle.search, query, k, namespaces, min_generation)

    async def embed(self, text: str) -> list[float]:
        return await once_more(self.handle.embed, text)

    async def embed_many(self, texts: list[str]) -> dict[str, Any]:
        return await once_more(self.handle.embed_many, texts)

    async def ingest(self, docs: list[Document]) -> dict[str, Any]:
        return await self.handle.ingest.remote(docs)

    async def chunk_bodies(self, doc_ids: list[str] | None = None) -> list[str]:
        return await once_more(self.handle.chunk_bodies, doc_ids)

    async def remove(self, doc_id: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.handle.remove.remote(doc_id, namespace)

    async def documents(self, namespaces: list[str] | None = None, min_generation: int = 0) -> list[dict[str, Any]]:
        return await once_more(self.handle.documents, namespaces, min_generation)

    async def document(
        self, doc_id: str, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> dict[str, Any]:
        return await once_more(self.handle.document, doc_id, namespaces, min_generation)

    async def stats(self, min_generation: int = 0) -> dict[str, Any]:
        return await once_more(self.handle.stats, min_generation)

    async def ready(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.handle.ready.remote(), timeout=5.0)


class HandleWorker:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def generate(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[str] | None = None,
    ) -> GenerationResult:
        return await once_more(self.handle.generate, messages, params, assistant_prefix, chunks)

    async def stream(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[str] | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        stream = self.handle.options(stream=True).stream.remote(messages, params, assistant_prefix, chunks)
        async for chunk in stream:
            yield chunk

    async def generate_with_signals(
        self, messages: list[ChatMessage], params: SamplingParams, assistant_prefix: str = ""
    ) -> SignalResult:
        return await once_more(self.handle.generate_with_signals, messages, params, assistant_prefix)

    async def tokenize(self, text: str | list[ChatMessage], add_special_tokens: bool = True) -> dict[str, Any]:
        return await once_more(self.handle.tokenize, text, add_special_tokens)

    async def detokenize(self, tokens: list[int]) -> dict[str, Any]:
        return await once_more(self.handle.detokenize, tokens)

    async def ready(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.handle.ready.remote(), timeout=5.0)

    async def metrics_text(self) -> str:
        # One replica answers: with several replicas, each scrape shows the series of the one that answered.
        return await asyncio.wait_for(self.handle.metrics_text.remote(), timeout=5.0)

    async def precompute(self, texts: list[str]) -> dict[str, Any]:
        # One replica takes the texts (Serve's router picks it); with several replicas the others compute
        # a chunk on its first sight, as before.
        return await self.handle.precompute.remote(texts)
