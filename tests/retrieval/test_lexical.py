"""BM25 beside the dense index and reciprocal rank fusion (real bm25s, real FAISS, real embedder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from retrieval.documents import Chunk, Document, Passage
from retrieval.lexical import reciprocal_rank_fusion
from retrieval.retriever import Retriever

DOCS = [
    Document(title="Quux", text="Zorblat is the capital of the kingdom of Quux, famous for its glass towers."),
    Document(title="Cats", text="A cat is a small feline; cats purr and hunt mice."),
    Document(title="Part 7731-B", text="The replacement gasket for pump model XR-7731-B is sold in packs of four."),
]


def passage(cid: int) -> Passage:
    return Passage(Chunk(cid, f"d{cid}", "", f"text {cid}", 0, 0), 0.0)


@pytest.mark.unit
def test_rrf_rewards_agreement_and_keeps_order_on_ties() -> None:
    a = [passage(1), passage(2), passage(3)]
    b = [passage(3), passage(4)]
    fused = reciprocal_rank_fusion([a, b], 3, rrf_k=60)
    assert [p.chunk.chunk_id for p in fused] == [3, 1, 2]  # 3 is in both rankings
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)
    assert [p.chunk.chunk_id for p in reciprocal_rank_fusion([[passage(1)], [passage(2)]], 5)] == [1, 2]
    assert reciprocal_rank_fusion([[], []], 4) == []


@pytest.fixture
def retriever(embedder: Any, tmp_path: Path) -> Retriever:
    r = Retriever.create(index_dir=tmp_path / "idx", embedder=embedder)
    r.ingest(DOCS)
    return r


@pytest.mark.integration
@pytest.mark.model
def test_bm25_and_hybrid_search(retriever: Retriever) -> None:
    # An identifier the embedder blurs is an exact lexical match.
    assert retriever.search("XR-7731-B gasket", 1, mode="bm25")[0].chunk.title == "Part 7731-B"
    assert retriever.search("XR-7731-B gasket", 1, mode="hybrid")[0].chunk.title == "Part 7731-B"
    # Paraphrase without shared words: BM25 finds nothing, dense and hybrid still do.
    assert retriever.search("meowing pets", 3, mode="bm25") == []
    assert retriever.search("meowing pets", 1, mode="dense")[0].chunk.title == "Cats"
    hybrid = retriever.search("meowing pets", 3, mode="hybrid")
    assert hybrid[0].chunk.title == "Cats" and len(hybrid) == 3
    assert hybrid[0].score == pytest.approx(1 / 61)  # first in the dense ranking, absent from BM25's
    both = retriever.search("What is the capital of Quux?", 1, mode="hybrid")[0]
    assert both.chunk.title == "Quux" and both.score == pytest.approx(2 / 61)  # first in both rankings


@pytest.mark.integration
@pytest.mark.model
def test_bm25_follows_ingest_and_removal(retriever: Retriever) -> None:
    assert retriever.search("Wibble", 2, mode="bm25") == []
    retriever.ingest([Document(id="w", title="Wibble", text="Wibble is a river in Quux.")])
    assert retriever.search("Wibble river", 1, mode="bm25")[0].chunk.doc_id == "w"
    retriever.remove("w")
    assert all(p.chunk.doc_id != "w" for p in retriever.search("Wibble river", 3, mode="bm25"))


@pytest.mark.integration
@pytest.mark.model
def test_search_mode_comes_from_config(retriever: Retriever, base_config: dict[str, Any]) -> None:
    import asyncio

    from services.config import load_config
    from services.deployments.retriever import RetrieverService

    cfg = load_config({**base_config, "retrieval": {"search": "bm25"}, "corpus": {"ingest_on_start": False}})
    svc = RetrieverService(cfg, retriever=retriever)
    assert asyncio.run(svc.search("meowing pets", 2)) == []  # lexical: no shared word
    with pytest.raises(Exception, match="retrieval.search"):
        load_config({"retrieval": {"search": "psychic"}})


@pytest.mark.unit
def test_one_tenants_uploads_do_not_move_another_tenants_bm25_scores(hashing_embedder: Any, tmp_path: Path) -> None:
    """A term's statistics come from the chunks the caller may read: tenant b writing the word a thousand
    times over changes nothing in tenant a's scores (with one index over every namespace, IDF moved)."""
    r = Retriever.create(index_dir=tmp_path / "idx", embedder=hashing_embedder)
    r.ingest(
        [
            Document(id="a1", text="The zorblat bridge crosses the Quux river.", namespace="a"),
            Document(id="a2", text="Ferries run when the river is high.", namespace="a"),
            Document(id="s1", text="The shared handbook covers bridges.", namespace="shared"),
        ]
    )
    readable = ["a", "shared"]

    def scores() -> list[tuple[str, float]]:
        hits = r.search("zorblat bridge", 3, namespaces=readable, mode="bm25")
        return [(p.chunk.doc_id, round(p.score, 6)) for p in hits]

    before = scores()
    assert before and before[0][0] == "a1"
    r.ingest([Document(id=f"b{i}", text=f"zorblat zorblat bridge note {i}", namespace="b") for i in range(50)])
    assert scores() == before
    # Tenant b's own search sees its documents, scored over its own and the shared ones.
    assert {p.chunk.doc_id for p in r.search("zorblat", 5, namespaces=["b", "shared"], mode="bm25")} <= {
        f"b{i}" for i in range(50)
    }
