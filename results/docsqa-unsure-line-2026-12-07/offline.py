"""Which answers should get the passages' closest line(s): replayed from a `bench docsqa` run whose answers carry
their tokens' mean probability (probe.yaml), with the line(s) recomputed here as the service ranks them (words and
the embedder, the same 8 passages). For each threshold on the probability and 1 or 2 lines: how many answers are
right (their own words, or a line under them that holds every key fact) and how many get a line.
`.venv/bin/python results/docsqa-unsure-line-2026-12-07/offline.py ANSWERS.jsonl` from the repository root."""

import json
import sys

sys.path.insert(0, ".")
from bench.bench_docsqa import docs_retriever, judge, read_docs_qa
from retrieval.embedder import Embedder
from retrieval.selection import LINE_SIMILARITY_WEIGHT, _score, line_units, unit_text
from services.config import load_config

config = load_config({})
r = config.retrieval
embedder = Embedder()
retriever = docs_retriever(config, embedder)
rows = {row["id"]: row for row in read_docs_qa("bench/data/docs_qa.jsonl")}


def top_lines(question: str, passages: list, n: int, whole: bool) -> list[str]:
    units = line_units(passages, whole_sentences=whole)
    if not units:
        return []
    _score(units, question)
    best = max(u.score for u in units)
    if best <= 0:
        return []
    vec = embedder.encode([question] + [unit_text(u) for u in units])
    w = LINE_SIMILARITY_WEIGHT
    for u, cos in zip(units, (vec[1:] @ vec[0]).tolist(), strict=True):
        u.score = (1 - w) * u.score / best + w * max(0.0, cos)
    out: list[str] = []
    for u in sorted(units, key=lambda u: (-u.score, u.passage, u.order)):
        text = f"{u.header}\n{u.text}" if u.header else u.text
        if not any(u.text in o for o in out):
            out.append(text)
        if len(out) == n:
            break
    return out


holds: dict[str, dict[tuple[int, bool], bool]] = {}
chars: dict[tuple[int, bool], int] = {}
for rid, row in rows.items():
    q = row["question"]
    ps = retriever.search(q, r.sentence_candidates, mode=r.search, candidates=r.hybrid_candidates, rrf_k=r.rrf_k)
    holds[rid] = {}
    for key in ((1, False), (2, False), (1, True), (2, True)):
        text = "\n".join(top_lines(q, ps, *key))
        holds[rid][key] = judge(text, row["must_include"])[0]
        chars[key] = chars.get(key, 0) + len(text)

answers = [json.loads(x) for x in open(sys.argv[1])]
print(f"{len(answers)} answers, right in their own words {sum(a['right_without_line'] for a in answers)}")  # noqa: T201
for key in ((1, False), (2, False), (1, True), (2, True)):
    n, whole = key
    print(f"{n} {'sentences' if whole else 'lines'}: mean {chars[key] / len(rows):.0f} characters")  # noqa: T201
    for tau in (0.0, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 1.01):
        right = shown = 0
        for a in answers:
            p = a.get("token_probability")
            failed = bool(a["evidence_reasons"]) or (p is not None and p < tau)
            shown += failed
            right += a["right_without_line"] or (failed and holds[a["id"]][key])
        unit = "sentences" if whole else "lines"
        print(f"{unit} {n} threshold {tau}: right {right}/{len(answers)}, answers with lines {shown}")  # noqa: T201
