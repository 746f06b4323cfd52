"""BM25 beside the dense index (bm25s), and reciprocal rank fusion of the two rankings.

The BM25 indexes are derived from the vector store's chunks, one per set of readable namespaces, and rebuilt
when the store's generation moves (bm25s indexes a corpus at once; rebuilding a few thousand chunks takes well
under a second), so they never need their own persistence and never disagree with the store of record.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrieval.documents import Chunk, Passage

if TYPE_CHECKING:
    from retrieval.store import VectorStore

logger = logging.getLogger(__name__)


def chunk_text(chunk: Chunk) -> str:
    return f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text


@dataclass
class _Built:
    """A BM25 index over one set of namespaces' chunks."""

    chunks: list[Chunk]
    bm25: Any
    tokenizer: Any


class LexicalIndex:
    """BM25 over the chunks a caller may read, one index per set of readable namespaces: a term's statistics
    (its document frequency, the corpus's mean length) come from those chunks alone, so one tenant's uploads
    never move another tenant's scores, and a score tells no one what others hold. The indexes of the sets
    searched most recently are kept (MAX_INDEXES) and all rebuilt lazily when the store's generation moves."""

    MAX_INDEXES = 32

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._built: OrderedDict[frozenset[str] | None, _Built] = OrderedDict()

    def _tokenizer_for_build(self) -> Any:
        import bm25s
        import Stemmer

        return bm25s.tokenization.Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en")

    def _index_for(self, key: frozenset[str] | None) -> _Built:
        with self.store._lock:
            generation = self.store.generation
            if generation != self._generation:
                self._built.clear()
                self._generation = generation
            built = self._built.get(key)
            if built is not None:
                self._built.move_to_end(key)
                return built
            chunks = [c for c in self.store.chunks.values() if key is None or c.namespace in key]
        import bm25s

        # bm25s sets its own logger to DEBUG on import, which floods any root handler at INFO or below.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        tokenizer = self._tokenizer_for_build()
        bm25 = None
        if chunks:
            ids = tokenizer.tokenize([chunk_text(c) for c in chunks], return_as="ids", show_progress=False)
            bm25 = bm25s.BM25()
            bm25.index(ids, show_progress=False)
        built = _Built(chunks, bm25, tokenizer)
        self._built[key] = built
        while len(self._built) > self.MAX_INDEXES:
            self._built.popitem(last=False)
        logger.debug(
            "BM25 index built: %d chunks of %s, generation %s", len(chunks), key or "every namespace", generation
        )
        return built

    def search(self, query: str, k: int, namespaces: Collection[str] | None = None) -> list[Passage]:
        """The top-k chunks of ``namespaces`` (None: all) by BM25 score over those namespaces' chunks alone
        (none when no query word is in them)."""
        with self._lock:
            built = self._index_for(frozenset(namespaces) if namespaces is not None else None)
            if built.bm25 is None or k <= 0:
                return []
            q = built.tokenizer.tokenize([query], return_as="ids", update_vocab=False, show_progress=False)
            if not q or not q[0]:
                return []
            k = min(k, len(built.chunks))
            docs, scores = built.bm25.retrieve(q, k=k, show_progress=False)
            return [
                Passage(built.chunks[int(i)], float(s))
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
