"""Offline measures of the docs-QA dev set (no model): for each question, whether every key fact is in the top 4 and
8 passages per search mode, in the sentence selection, and in the closest line ranked by words alone and by words
and the embedder (README: "Sections in the search, lines by the embedder").
`.venv/bin/python results/docsqa-sections-search-2026-12-07/offline.py` from the repository root."""

import sys

sys.path.insert(0, ".")
from bench.bench_docsqa import docs_retriever, judge, read_docs_qa
from retrieval.embedder import Embedder
from retrieval.selection import best_lines, line_units, select_sentences, unit_text
from services.config import load_config

config = load_config({})
r = config.retrieval
embedder = Embedder()
retriever = docs_retriever(config, embedder)
rows = read_docs_qa("bench/data/docs_qa.jsonl")
found: dict[str, int] = {}


def count(key: str, text: str, row: dict) -> None:
    found[key] = found.get(key, 0) + judge(text, row["must_include"])[0]


for row in rows:
    q = row["question"]
    for mode in ("hybrid", "bm25", "dense"):
        ps = retriever.search(q, 8, mode=mode, candidates=r.hybrid_candidates, rrf_k=r.rrf_k)
        for k in (4, 8):
            count(f"{mode} top {k}", "\n".join(f"{p.chunk.title}\n{p.chunk.text}" for p in ps[:k]), row)
    ps = retriever.search(q, r.sentence_candidates, mode=r.search, candidates=r.hybrid_candidates, rrf_k=r.rrf_k)
    count("selection", "\n".join(p.chunk.text for p in select_sentences(q, ps, r.sentence_tokens)), row)
    by_words = next(iter(best_lines(q, ps)), None)
    vectors = embedder.encode([q] + [unit_text(u) for u in line_units(ps)])
    both = next(iter(best_lines(q, ps, similarity=(vectors[1:] @ vectors[0]).tolist())), None)
    count("line by words", by_words[1] if by_words else "", row)
    count("line by words and embedder", both[1] if both else "", row)
for key, n in found.items():
    print(f"{key}: {n}/{len(rows)}")  # noqa: T201
