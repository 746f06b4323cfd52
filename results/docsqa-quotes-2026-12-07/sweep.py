"""Offline sweep of the quotes under every answer: for the embedder's weight in the ranking, the passages the
sentences come from and how many are quoted, for how many of the 100 docs-QA questions the reply holds every key
fact (the model's own words right, from a run's answers, or the quotes holding them), and the quotes' length.
`.venv/bin/python results/docsqa-quotes-2026-12-07/sweep.py ANSWERS.jsonl` from the repository root."""

import json
import sys

sys.path.insert(0, ".")
import retrieval.selection as sel
from bench.bench_docsqa import docs_retriever, judge, read_docs_qa
from retrieval.embedder import Embedder
from services.config import load_config

config = load_config({})
r = config.retrieval
embedder = Embedder()
retriever = docs_retriever(config, embedder)
rows = read_docs_qa("bench/data/docs_qa.jsonl")
own = {a["id"]: a["right_without_line"] for a in map(json.loads, open(sys.argv[1])) if "qwen" in a["model"]}
weights = (0.5, 0.65, 0.8, 0.9)
pools = (4, 8, 12)
counts = (1, 2, 3)
right = {(w, k, n): 0 for w in weights for k in pools for n in counts}
chars = dict.fromkeys(right, 0)
for row in rows:
    q = row["question"]
    found = retriever.search(q, max(pools), mode=r.search, candidates=r.hybrid_candidates, rrf_k=r.rrf_k)
    for k in pools:
        ps = found[:k]
        units = sel.line_units(ps, whole_sentences=True)
        vec = embedder.encode([q] + [sel.unit_text(u) for u in units]) if units else None
        sims = (vec[1:] @ vec[0]).tolist() if vec is not None else None
        for w in weights:
            sel.LINE_SIMILARITY_WEIGHT = w
            for n in counts:
                text = "\n".join(t for _, t in sel.best_lines(q, ps, count=n, similarity=sims, whole_sentences=True))
                right[(w, k, n)] += own[row["id"]] or judge(text, row["must_include"])[0]
                chars[(w, k, n)] += len(text)
for (w, k, n), v in right.items():
    print(f"weight {w} passages {k} sentences {n}: {v}/100, {chars[(w, k, n)] / len(rows):.0f} chars")  # noqa: T201
