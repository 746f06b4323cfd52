"""Offline: does the sentence selection hold every key fact of the 100 docs-QA questions more often when its units are
ranked by words and the embedder (as the closest line is) instead of words alone? No model.
`.venv/bin/python results/docsqa-selection-embedder-2026-12-07/offline.py` from the repository root."""

import sys

sys.path.insert(0, ".")
import retrieval.selection as sel
from bench.bench_docsqa import docs_retriever, judge, read_docs_qa
from retrieval.embedder import Embedder
from retrieval.selection import line_units, select_sentences, unit_text
from services.config import load_config

config = load_config({})
r = config.retrieval
embedder = Embedder()
retriever = docs_retriever(config, embedder)
rows = read_docs_qa("bench/data/docs_qa.jsonl")
weights = [0.0, 0.3, 0.5, 0.65, 0.8]
budgets = [250, 350, 500]
found = {(w, b): 0 for w in weights for b in budgets}
chars = {(w, b): 0 for w in weights for b in budgets}
orig = sel._score
for row in rows:
    q = row["question"]
    ps = retriever.search(q, r.sentence_candidates, mode=r.search, candidates=r.hybrid_candidates, rrf_k=r.rrf_k)
    units = line_units(ps)
    vec = embedder.encode([q] + [unit_text(u) for u in units])
    cos = (vec[1:] @ vec[0]).tolist()
    for w in weights:

        def scored(us, question, context=None, w=w, cos=cos):
            orig(us, question, context)
            best = max((u.score for u in us), default=0.0)
            if best <= 0 or w == 0:
                return
            for u, c in zip(us, cos, strict=True):
                u.score = (1 - w) * u.score / best + w * max(0.0, c)

        sel._score = scored
        for b in budgets:
            text = "\n".join(p.chunk.text for p in select_sentences(q, ps, b))
            found[(w, b)] += judge(text, row["must_include"])[0]
            chars[(w, b)] += len(text)
        sel._score = orig
for (w, b), n in found.items():
    print(f"weight {w} budget {b}: {n}/{len(rows)}, {chars[(w, b)] / len(rows):.0f} chars")  # noqa: T201
