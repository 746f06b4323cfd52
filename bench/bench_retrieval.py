"""`ragyard bench retrieval`: dense, BM25 and hybrid (reciprocal rank fusion) side by side.

Measured per file over the union of its contexts (the eval corpus):
- answer recall@k (DPR's measure): the share of questions whose gold answer, normalised, appears in one of
  the top-k passages. Yes/no questions (BoolQ) have no answer string to find, so for them
- passage recall@k: the share of questions whose own context document is among the top-k (BoolQ rows carry
  exactly their gold passage; HotpotQA rows carry 2 gold paragraphs among 8 distractors, so it is not used there).
- search time per query (median), each mode measured on the same questions in turn.
With ``downstream_limit``, `single` is run with each mode on the first N questions of the test half of each
file (the model answering is the config's first unless ``model``), for F1.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import corpus_of, index_dir_for, read_rows
from core.scoring import is_yes_no, normalize_answer
from retrieval.documents import Document
from retrieval.retriever import SearchMode
from services.config import AppConfig

MODES: tuple[SearchMode, ...] = ("dense", "bm25", "hybrid")
KS = (1, 2, 4, 10)


def answer_found(answers: list[str], texts: list[str]) -> bool:
    golds = [g for g in (normalize_answer(a) for a in answers) if g]
    bodies = [f" {normalize_answer(t)} " for t in texts]
    return any(f" {g} " in b for g in golds for b in bodies)


def bench_retrieval(
    config: AppConfig,
    data: list[str],
    out: str | Path,
    *,
    ks: tuple[int, ...] = KS,
    limit: int | None = None,
    downstream_limit: int = 0,
    model: str | None = None,
    max_tokens: int = 32,
    seed: int = 0,
) -> str:
    from retrieval.embedder import Embedder
    from retrieval.retriever import Retriever

    embedder = Embedder(config.embedder.path, device=config.embedder.device)
    r = config.retrieval
    result: dict[str, Any] = {
        "settings": {"hybrid_candidates": r.hybrid_candidates, "rrf_k": r.rrf_k, "ks": list(ks)},
        "files": {},
    }
    top = max(ks)
    for path in data:
        rows = read_rows(path, limit)
        docs = corpus_of(path)
        retriever = Retriever.create(
            index_dir=index_dir_for(config, docs),
            chunk_tokens=config.index.chunk_tokens,
            chunk_overlap_tokens=config.index.chunk_overlap_tokens,
            embedder=embedder,
        )
        retriever.ingest(docs)
        retriever.search("warm up", 1, mode="hybrid")  # builds the BM25 index outside the timings
        per_mode: dict[str, dict[str, Any]] = {}
        for mode in MODES:
            hits = dict.fromkeys(ks, 0)
            passage_hits = dict.fromkeys(ks, 0)
            answerable = passage_rows = 0
            times = []
            for row in rows:
                start = time.perf_counter()
                found = retriever.search(
                    row["question"], top, mode=mode, candidates=max(top, r.hybrid_candidates), rrf_k=r.rrf_k
                )
                times.append(time.perf_counter() - start)
                texts = [f"{p.chunk.title}\n{p.chunk.text}" for p in found]
                if is_yes_no(row["answers"]):
                    own = {Document(title=c.get("title", ""), text=c["text"]).id for c in row.get("contexts", [])}
                    if len(own) == 1:
                        passage_rows += 1
                        for k in ks:
                            passage_hits[k] += any(p.chunk.doc_id in own for p in found[:k])
                else:
                    answerable += 1
                    for k in ks:
                        hits[k] += answer_found(row["answers"], texts[:k])
            per_mode[mode] = {
                "questions": len(rows),
                "answer_recall": {str(k): round(hits[k] / answerable, 4) for k in ks} if answerable else None,
                "answer_questions": answerable,
                "passage_recall": (
                    {str(k): round(passage_hits[k] / passage_rows, 4) for k in ks} if passage_rows else None
                ),
                "passage_questions": passage_rows,
                "search_ms_p50": round(1000 * statistics.median(times), 2) if times else None,
            }
        result["files"][Path(path).name] = {"chunks": len(retriever.store), "modes": per_mode}
    if downstream_limit > 0:
        result["downstream"] = _downstream(config, data, downstream_limit, model, max_tokens, seed, embedder)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = retrieval_table(result)
    (out_dir / "retrieval.md").write_text(table, encoding="utf-8")
    return table


def _downstream(
    config: AppConfig,
    data: list[str],
    limit: int,
    model: str | None,
    max_tokens: int,
    seed: int,
    embedder: Any,
) -> dict[str, Any]:
    """`single` with each search mode on the same questions, interleaved question by question."""
    import asyncio

    from bench.harness import Evaluator
    from router.labels import split_rows

    base = Evaluator(config, embedder=embedder, models=[model] if model else None)
    out: dict[str, Any] = {"model": next(iter(base.workers)), "policy": "single", "files": {}}
    for path in data:
        _, test = split_rows(read_rows(path), seed)
        test = test[:limit]
        services = {}
        for mode in MODES:
            cfg = config.model_copy(update={"retrieval": config.retrieval.model_copy(update={"search": mode})})
            ev = Evaluator(cfg, worker=base.worker, embedder=embedder, models=[out["model"]])
            services[mode] = (ev, ev.service_for(path))
        preds: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for n, row in enumerate(test):
            order = MODES[n % 3 :] + MODES[: n % 3]
            for mode in order:
                ev, svc = services[mode]
                preds[mode].append(asyncio.run(ev.answer_row(svc, row, "single", max_tokens=max_tokens)))
        out["files"][Path(path).name] = {
            m: {
                "n": len(p),
                "f1": round(statistics.fmean(x["f1"] for x in p), 4) if p else None,
                "em": round(statistics.fmean(x["em"] for x in p), 4) if p else None,
                "mean_latency_s": round(statistics.fmean(x["latency_s"] for x in p), 3) if p else None,
            }
            for m, p in preds.items()
        }
    return out


def retrieval_table(result: dict[str, Any]) -> str:
    ks = result["settings"]["ks"]
    lines = [
        "| file | mode | measure | " + " | ".join(f"@{k}" for k in ks) + " | search ms p50 |",
        "| --- | --- | --- | " + " | ".join("---" for _ in ks) + " | --- |",
    ]
    for name, f in result["files"].items():
        for mode, m in f["modes"].items():
            for measure in ("answer_recall", "passage_recall"):
                if m[measure] is None:
                    continue
                n = m["answer_questions" if measure == "answer_recall" else "passage_questions"]
                cells = " | ".join(f"{m[measure][str(k)]:.3f}" for k in ks)
                lines.append(
                    f"| {name} | {mode} | {measure.replace('_', ' ')} (n={n}) | {cells} | {m['search_ms_p50']} |"
                )
    if "downstream" in result:
        d = result["downstream"]
        lines += [
            "",
            f"Downstream `single` on {d['model']}:",
            "",
            "| file | mode | n | F1 | EM | mean s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, per in d["files"].items():
            for mode, v in per.items():
                lines.append(f"| {name} | {mode} | {v['n']} | {v['f1']} | {v['em']} | {v['mean_latency_s']} |")
    return "\n".join(lines) + "\n"
