"""The retriever as a service: loads the index, indexes the sample corpus, answers searches.

With ``index.log_url`` set, each replica follows the shared corpus log: it catches up before its constructor
returns (so Serve reports it ready only then), applies new entries on a thread of its own, and a request that
names a ``min_generation`` is answered only once this replica has applied that generation."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from typing_extensions import TypedDict  # FastAPI reads a route's TypedDict on Python 3.11

from core.chunks import PromptChunk
from retrieval.corpus_log import open_log
from retrieval.documents import CorpusStats, DocKey, Document, DocumentSummary, IngestReport, IngestResult, Passage
from retrieval.embedder import LOCK_SLICE
from retrieval.errors import DocumentFormatError
from retrieval.ingest import load_path
from retrieval.retriever import Retriever
from services.config import ConfigSource, load_config
from services.errors import InvalidRequestError

logger = logging.getLogger(__name__)


class Embeddings(TypedDict):
    """The embedder's vectors for a batch of texts, and what it read of each (the embeddings API)."""

    model: str
    dim: int
    vectors: list[list[float]]
    tokens: list[int]  # each text's token count, as far as the embedder reads (it truncates)


class Removal(TypedDict):
    id: str
    deleted: bool  # False: there was no such document
    generation: int


class Readiness(CorpusStats):
    ready: bool


class Inventory(TypedDict):
    replica: str
    generation: int
    missing: list[str]  # the asked-for documents this replica does not hold


def replica_name() -> str:
    """This Serve replica's id ("local" outside Serve)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - not in a replica
        return "local"


class RetrieverService:
    def __init__(self, config: ConfigSource, *, retriever: Retriever | None = None) -> None:
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
            log=open_log(idx.log_url, fsync=idx.log_fsync, prefix=idx.log_prefix) if idx.log_url else None,
        )
        if self.config.corpus.ingest_on_start:
            self.ingest_paths(self.config.corpus.paths)
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        if self.retriever.log is not None:
            self._follower = threading.Thread(
                target=self.retriever.follow, args=(self._stop,), name="corpus-log-follower", daemon=True
            )
            self._follower.start()

    def close(self) -> None:
        """Stop following the log (the thread ends within its blocking read's second) and let go of the index."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=5.0)
        self.retriever.store.close()

    def __del__(self) -> None:  # Serve drops a replica's object when it stops it
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def ingest_paths(self, paths: list[str]) -> IngestResult:
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

    def ready(self) -> Readiness:
        return {"ready": True, **self.retriever.stats()}

    async def _reach(self, min_generation: int) -> None:
        if min_generation > self.retriever.generation:
            await asyncio.to_thread(self.retriever.catch_up, min_generation)

    async def search(
        self, query: str, k: int, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> list[Passage]:
        """The top-k passages among the documents of ``namespaces`` (None: every document), once this
        replica holds corpus generation ``min_generation``."""
        await self._reach(min_generation)
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

    def _embedding_tokens(self, texts: list[str]) -> list[int]:
        """Each text's token count as the embedder reads it (it truncates at its maximum sequence length); a
        request over ``embedder.max_tokens_per_request`` is a 400, counted before any embedding (the tokenizer
        is fast, the model is what costs)."""
        embedder = self.retriever.embedder
        limit = int(getattr(embedder.model, "max_seq_length", 0) or 0)
        counts: list[int] = []
        for at in range(0, len(texts), LOCK_SLICE):
            # A slice per call: the tokenizer runs under the embedder's lock, and a small request's embedding
            # gets in between the slices of a large one's count.
            part = embedder.tokenizer(texts[at : at + LOCK_SLICE], add_special_tokens=True).input_ids
            counts += [len(ids) for ids in part]
        tokens = [min(c, limit) if limit else c for c in counts]
        budget = self.config.embedder.max_tokens_per_request
        if sum(tokens) > budget:
            raise InvalidRequestError(
                f"the input is {sum(tokens)} tokens to embed; at most {budget} per request "
                "(embedder.max_tokens_per_request): send it in smaller requests",
                param="input",
                code="input_too_large",
            )
        return tokens

    async def embed_many(self, texts: list[str]) -> Embeddings:
        """The embedder's vectors for ``texts`` in one batch (the embeddings API), with each text's token
        count (`embedding_tokens`)."""

        def run() -> Embeddings:
            embedder = self.retriever.embedder
            tokens = self._embedding_tokens(texts)
            vectors = embedder.encode(texts)
            return {"model": embedder.name, "dim": int(vectors.shape[1]), "vectors": vectors.tolist(), "tokens": tokens}

        return await asyncio.to_thread(run)

    async def ingest(self, docs: list[Document]) -> IngestResult:
        report = await asyncio.to_thread(self._bounded_ingest, docs)
        return report.as_dict()

    def _bounded_ingest(self, docs: list[Document]) -> IngestReport:
        budget = self.config.index.max_tokens_per_upload
        tokenizer = self.retriever.embedder.tokenizer
        counts: dict[tuple[str, str], int] = {}
        total = 0
        for doc in docs:
            n = len(tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"])
            counts[(doc.namespace, doc.id)] = n
            total += n
            if total > budget:
                raise DocumentFormatError(
                    f"the upload holds over {budget} tokens of text (index.max_tokens_per_upload): send it in parts"
                )
        report = self.retriever.ingest(docs)
        changed = {*report.added, *report.updated}
        report.tokens = sum(n for (_, doc_id), n in counts.items() if doc_id in changed)
        return report

    async def chunk_bodies(self, keys: list[DocKey] | None = None) -> list[PromptChunk]:
        """The chunks of these documents, by (namespace, id) (None: all), as prompts show them, for the workers'
        chunk-KV cache."""
        return await asyncio.to_thread(self.retriever.chunk_bodies, keys)

    async def remove(self, doc_id: str, namespace: str | None = None) -> Removal:
        removed = await asyncio.to_thread(self.retriever.remove, doc_id, namespace)
        return {"id": doc_id, "deleted": removed, "generation": self.retriever.generation}

    async def documents(self, namespaces: list[str] | None = None, min_generation: int = 0) -> list[DocumentSummary]:
        await self._reach(min_generation)
        return self.retriever.documents(namespaces)

    async def document(
        self, doc_id: str, namespaces: list[str] | None = None, min_generation: int = 0
    ) -> DocumentSummary:
        await self._reach(min_generation)
        return self.retriever.document(doc_id, namespaces)

    async def support_vectors(
        self, sentences: list[str], chunks: list[tuple[str, str, int]]
    ) -> tuple[list[list[float]], list[list[float] | None]]:
        """For the support check: the sentences embedded, and the chunks' stored vectors (None: not held here)."""

        def run() -> tuple[list[list[float]], list[list[float] | None]]:
            stored = self.retriever.store.chunk_vectors(chunks)
            return self.retriever.embedder.encode(sentences).tolist() if sentences else [], stored

        return await asyncio.to_thread(run)

    async def fingerprints(self, keys: list[DocKey], min_generation: int = 0) -> list[str | None]:
        """The documents' fingerprints now (None: gone), at least at ``min_generation``."""
        await self._reach(min_generation)
        return self.retriever.fingerprints([(str(ns), str(doc_id)) for ns, doc_id in keys])

    async def stats(self, min_generation: int = 0) -> CorpusStats:
        await self._reach(min_generation)
        return self.retriever.stats()

    async def inventory(self, doc_ids: list[str]) -> Inventory:
        """Which of ``doc_ids`` this replica holds now (no catch-up first): what the scale-out checks ask each
        replica, to see every committed document reach every replica."""
        held = {doc_id for _, doc_id in list(self.retriever.store.docs)}
        return {
            "replica": replica_name(),
            "generation": self.retriever.generation,
            "missing": [d for d in doc_ids if d not in held],
        }
