"""What the answer service does for the corpus besides searching it: ingest through the retriever (a tenant with a
budget pays for the text it has embedded, as for its embeddings), then hand the new chunks to the workers that
compute chunk KV ahead (in the background: an ingest never waits for it), and at start-up queue every stored chunk
once the retriever answers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from core.capabilities import CHUNK_PRECOMPUTE
from retrieval.documents import DocKey, Document, IngestResult
from retrieval.generation import Precompute
from services.config import AppConfig
from services.pipeline.clients import RetrieverClient, RouterClient, WorkerClient
from services.pipeline.work_budget import work_budget

logger = logging.getLogger(__name__)


class CorpusWork:
    def __init__(
        self,
        config: AppConfig,
        retriever: RetrieverClient,
        workers: dict[str, WorkerClient],
        router: RouterClient | None = None,
    ) -> None:
        self.config = config
        self.retriever = retriever
        self.workers = workers
        self.router = router
        self._tasks: set[asyncio.Future[Any]] = set()  # precomputes in flight (kept from the GC)

    async def ingest(self, docs: list[Document], tenant: str | None = None) -> IngestResult:
        """Index ``docs``. For a ``tenant`` with a budget, the worst case is reserved first (a token is at least a
        character, so the text's characters, up to the upload's token bound) or the upload is refused with 429
        `insufficient_quota`; what was embedded is charged after (unchanged documents are free), nothing when the
        ingest failed."""
        worst = min(sum(len(d.text) for d in docs), self.config.index.max_tokens_per_upload)
        async with work_budget(self.router, tenant, self.config.embedder.id, worst, "ing") as spend:
            result = await self.retriever.ingest(docs)
            spend.tokens = int(result.get("tokens", 0))
        changed = {*result["added"], *result["updated"]}
        if changed:
            # The workers compute the new chunks' KV in the background: the ingest never waits for it.
            keys = list(dict.fromkeys((d.namespace, d.id) for d in docs if d.id in changed))
            self._background(self.precompute_chunks(keys))
        return result

    def precompute_models(self) -> list[str]:
        """The models whose engine computes chunk KV ahead and whose config asks for it; none when prompts hold the
        sentences selected for each question (`retrieval.context: sentences`), which no stored chunk matches."""
        if self.config.retrieval.context == "sentences":
            return []
        return [
            m.id
            for m in self.config.models
            if m.chunk_cache.enabled and m.chunk_cache.precompute and CHUNK_PRECOMPUTE in m.capabilities
        ]

    async def precompute_chunks(self, keys: list[DocKey] | None = None) -> dict[str, Precompute]:
        """Hand the chunks of these documents, by (namespace, id) (None: every document), to each precomputing
        worker."""
        models = [m for m in self.precompute_models() if m in self.workers]
        if not models:
            return {}
        bodies = await self.retriever.chunk_bodies(keys)
        out: dict[str, Precompute] = {}
        for mid in models:
            try:
                out[mid] = await self.workers[mid].precompute(bodies)
            except Exception as exc:  # noqa: BLE001 - a worker that cannot take them computes on first sight
                logger.warning("chunk KV precompute on %s failed: %s", mid, exc)
        return out

    async def warm_chunk_kv(self, *, attempts: int = 60, delay_s: float = 5.0) -> dict[str, Precompute]:
        """At start-up: once the retriever answers (it indexes the bundled corpus first), queue every stored
        chunk for the precomputing workers."""
        if not self.precompute_models():
            return {}
        for _ in range(attempts):
            try:
                await self.retriever.ready()
                return await self.precompute_chunks(None)
            except Exception as exc:  # noqa: BLE001 - not up yet: try again
                logger.debug("chunk KV warm-up waits for the retriever: %s", exc)
                await asyncio.sleep(delay_s)
        logger.warning("chunk KV warm-up gave up: the retriever did not answer")
        return {}

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
