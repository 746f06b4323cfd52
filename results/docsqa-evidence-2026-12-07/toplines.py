"""For each docs-QA question: do the best-scored lines of the selection hold the key facts, and do they for the
answers of results/docsqa-default-2026-12-07 that were wrong?
`.venv/bin/python results/docsqa-evidence-2026-12-07/toplines.py OUT.json` (README: "The passages' closest line")."""

import json
import sys

sys.path.insert(0, ".")
from bench.bench_docsqa import docs_retriever, judge, read_docs_qa
from retrieval.embedder import Embedder
from retrieval.selection import _score, select_sentences, split_units
from services.config import load_config

config = load_config({})
r = config.retrieval
retr = docs_retriever(config, Embedder())
rows = read_docs_qa("bench/data/docs_qa.jsonl")
ans = {}
for line in open("results/docsqa-default-2026-12-07/answers.jsonl"):
    x = json.loads(line)
    if x["model"].startswith("qwen"):
        ans[x["id"]] = x
k = max(r.top_k, r.sentence_candidates)
stats = {"top1": 0, "top2": 0, "top3": 0, "selected": 0}
fail_rescued = {"top1": 0, "top2": 0}
out = []
for row in rows:
    ps = retr.search(row["question"], k, mode=r.search, candidates=r.hybrid_candidates, rrf_k=r.rrf_k)
    units = [u for n, p in enumerate(ps) for u in split_units(p.chunk.text, n)]
    _score(units, row["question"])
    ranked = sorted(units, key=lambda u: (-u.score, u.passage, u.order))
    sel = select_sentences(row["question"], ps, r.sentence_tokens)
    seltext = "\n".join(p.chunk.text for p in sel)
    tops = {}
    for n in (1, 2, 3):
        text = "\n".join((u.header or "") + " " + u.text for u in ranked[:n])
        tops[n] = judge(text, row["must_include"])[0]
        stats[f"top{n}"] += tops[n]
    stats["selected"] += judge(seltext, row["must_include"])[0]
    a = ans.get(row["id"])
    if a and not a["right"]:
        fail_rescued["top1"] += tops[1]
        fail_rescued["top2"] += tops[2]
    out.append(
        {
            "id": row["id"],
            "q": row["question"],
            "top": [u.text[:160] for u in ranked[:2]],
            "tops": tops,
            "model_right": a and a["right"],
            "restated": a and a["restated"],
        }
    )
print(stats, "of", len(rows))  # noqa: T201
print("wrong answers whose top lines hold the facts:", fail_rescued)  # noqa: T201
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh, indent=1)
