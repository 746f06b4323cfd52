"""BM25 beside the dense index (bm25s), and reciprocal rank fusion of the two rankings.

The BM25 index is derived from the vector store's chunks and rebuilt when the store's generation moves
(bm25s indexes a corpus at once; rebuilding a few thousand chunks takes well under a second), so it
never needs its own persistence and never disagrees with the store of record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.documents import Chunk, Passage

if TYPE_CHECKING:
    from retrieval.store import VectorStore

logger = logging.getLogger(__name__)


def chunk_text(chunk: Chunk) -> str:
    return f"{chunk.title}\n{chunk.text}" if chunk.title else chunk.text


class LexicalIndex:
    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._chunks: list[Chunk] = []
        self._bm25: Any = None
        self._tokenizer: Any = None
        # Per set of namespaces: 1.0 for each of `_chunks` in it, 0.0 otherwise (bm25s' weight mask).
        self._masks: dict[frozenset[str], np.ndarray] = {}

    def _tokenizer_for_build(self) -> Any:
        import bm25s
        import Stemmer

        return bm25s.tokenization.Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en")

    def _ensure(self) -> None:
        generation = self.store.generation
        if generation == self._generation:
            return
        import bm25s

        # bm25s sets its own logger to DEBUG on import, which floods any root handler at INFO or below.
        logging.getLogger("bm25s").setLevel(logging.WARNING)

        with self.store._lock:
            chunks = list(self.store.chunks.values())
            generation = self.store.generation
        tokenizer = self._tokenizer_for_build()
        bm25 = None
        if chunks:
            ids = tokenizer.tokenize([chunk_text(c) for c in chunks], return_as="ids", show_progress=False)
            bm25 = bm25s.BM25()
            bm25.index(ids, show_progress=False)
        self._chunks, self._bm25, self._tokenizer, self._generation = chunks, bm25, tokenizer, generation
        self._masks = {}
        logger.debug("BM25 index rebuilt: %d chunks, generation %s", len(chunks), generation)

    def search(self, query: str, k: int, namespaces: Collection[str] | None = None) -> list[Passage]:
        """The top-k chunks by BM25 score (none when no query word is in the corpus), among the chunks of
        ``namespaces`` (None: all); the others are masked out before the top k are taken."""
        with self._lock:
            self._ensure()
            if self._bm25 is None or k <= 0:
                return []
            q = self._tokenizer.tokenize([query], return_as="ids", update_vocab=False, show_progress=False)
            if not q or not q[0]:
                return []
            mask = None
            if namespaces is not None:
                key = frozenset(namespaces)
                if key not in self._masks:
                    self._masks[key] = np.array([c.namespace in key for c in self._chunks], dtype=np.float32)
                mask = self._masks[key]
                k = min(k, int(mask.sum()))
                if k == 0:
                    return []
            k = min(k, len(self._chunks))
            docs, scores = self._bm25.retrieve(q, k=k, show_progress=False, weight_mask=mask)
            return [
                Passage(self._chunks[int(i)], float(s))
                for i, s in zip(docs[0], scores[0], strict=True)
                if float(s) > 0.0
            ]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Passage]], k: int, rrf_k: int = 60) -> list[Passage]:
    """Fuse rankings by Σ 1 / (rrf_k + rank) (Cormack et al. 2009); the score of a fused passage is that
    sum. Ties keep the order of the first ranking a chunk appears in."""
    fused: dict[int, float] = {}
    first: dict[int, Chunk] = {}
    order: dict[int, int] = {}
    for ranking in rankings:
        for rank, p in enumerate(ranking, start=1):
            cid = p.chunk.chunk_id
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (rrf_k + rank)
            first.setdefault(cid, p.chunk)
            order.setdefault(cid, len(order))
    best = sorted(fused, key=lambda c: (-fused[c], order[c]))[:k]
    return [Passage(first[c], fused[c]) for c in best]
