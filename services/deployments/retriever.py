"""The retriever as a service: loads the index, indexes the sample corpus, answers searches."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from retrieval.documents import Document, Passage
from retrieval.ingest import load_path
from retrieval.retriever import Retriever
from services.config import AppConfig, load_config

logger = logging.getLogger(__name__)


class RetrieverService:
    def __init__(self, config: AppConfig | dict[str, Any] | str, *, retriever: Retriever | None = None) -> None:
        self.config = load_config(config)
        idx = self.config.index
        emb = self.config.embedder
        self.retriever = retriever or Retriever.create(
            index_dir=idx.dir,
            chunk_tokens=idx.chunk_tokens,
            chunk_overlap_tokens=idx.chunk_overlap_tokens,
            embedder_path=emb.path,
            device=emb.device,
            batch_size=emb.batch_size,
            lock_timeout_s=idx.lock_timeout_s,
        )
        if self.config.corpus.ingest_on_start:
            self.ingest_paths(self.config.corpus.paths)

    def ingest_paths(self, paths: list[str]) -> dict[str, Any]:
        docs: list[Document] = []
        for path in paths:
            if not Path(path).exists():
                logger.warning("corpus path %s does not exist; skipped", path)
                continue
            docs.extend(load_path(path))
        report = self.retriever.ingest(docs)
        logger.info(
            "sample corpus: %d added, %d updated, %d unchanged",
            len(report.added),
            len(report.updated),
            len(report.unchanged),
        )
        return report.as_dict()

    def check_health(self) -> None:
        """Serve's health check: the index in memory must agree with itself (one vector per chunk)."""
        store = self.retriever.store
        if store.index.ntotal != len(store.chunks):
            raise RuntimeError(f"index holds {store.index.ntotal} vectors for {len(store.chunks)} chunks")

    def ready(self) -> dict[str, Any]:
        return {"ready": True, **self.retriever.stats()}

    async def search(self, query: str, k: int, namespaces: list[str] | None = None) -> list[Passage]:
        """The top-k passages among the documents of ``namespaces`` (None: every document)."""
        r = self.config.retrieval
        return await asyncio.to_thread(
            self.retriever.search,
            query,
            k,
            mode=r.search,
            candidates=r.hybrid_candidates,
            rrf_k=r.rrf_k,
            namespaces=namespaces,
        )

    async def embed(self, text: str) -> list[float]:
        """The query embedding (the router's classifier reads it too)."""
        vec = await asyncio.to_thread(self.retriever.embed_query, text)
        return [float(v) for v in vec]

    async def ingest(self, docs: list[Document]) -> dict[str, Any]:
        report = await asyncio.to_thread(self.retriever.ingest, docs)
        return {**report.as_dict(), "generation": self.retriever.store.generation}

    async def remove(self, doc_id: str, namespace: str | None = None) -> dict[str, Any]:
        removed = await asyncio.to_thread(self.retriever.remove, doc_id, namespace)
        return {"id": doc_id, "deleted": removed, "generation": self.retriever.store.generation}

    async def documents(self, namespaces: list[str] | None = None) -> list[dict[str, Any]]:
        return self.retriever.documents(namespaces)

    async def document(self, doc_id: str, namespaces: list[str] | None = None) -> dict[str, Any]:
        return self.retriever.document(doc_id, namespaces)

    async def stats(self) -> dict[str, Any]:
        return self.retriever.stats()
