"""`ragyard bench docsqa`: a newcomer's questions about Ragyard itself, answered over the bundled docs.

The set (``data/docs_qa.jsonl``, written once by hand) has a reference answer per question and the key
facts a right answer must hold: ``must_include`` is a list of groups, each a list of alternatives, and an
answer is right when every group has one alternative in it (case-insensitive). The corpus is the one the
service indexes at startup (``corpus.paths``: the README and docs/). Each model answers every question in
the chat style the HTTP API uses, the models interleaved question by question.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from retrieval.evidence import own_words
from services.config import AppConfig

DOCS_QA = Path(__file__).with_name("data") / "docs_qa.jsonl"


def read_docs_qa(path: str | Path = DOCS_QA) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        groups = r.get("must_include")
        if not r.get("question") or not r.get("answers") or not groups or not all(groups):
            raise ValueError(f"docs-QA row {r.get('id')!r} needs question, answers and non-empty must_include groups")
    return rows


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def judge(answer: str, must_include: list[list[str]]) -> tuple[bool, list[list[str]]]:
    """Right when every group of key facts has one alternative in the answer; returns the groups missed."""
    text = answer.lower()
    missed = [group for group in must_include if not any(alt.lower() in text for alt in group)]
    return not missed, missed


def docs_retriever(config: AppConfig, embedder: Any) -> Any:
    """The bundled corpus (``corpus.paths``: the README and docs/) indexed as `make run` indexes it."""
    from bench.harness import index_dir_for
    from retrieval.ingest import load_path
    from retrieval.retriever import Retriever

    docs = [d for p in config.corpus.paths if Path(p).exists() for d in load_path(p)]
    retriever = Retriever.create(
        index_dir=index_dir_for(config, docs),
        chunk_tokens=config.index.chunk_tokens,
        chunk_overlap_tokens=config.index.chunk_overlap_tokens,
        embedder=embedder,
    )
    retriever.ingest(docs)
    return retriever


def docs_service(config: AppConfig, evaluator: Any, retriever: Any = None) -> Any:
    """A service over the bundled corpus with the evaluator's workers (no response cache)."""
    from services.deployments.retriever import RetrieverService
    from services.pipeline import RagService
    from services.pipeline.clients import local_retriever, local_worker

    retriever = retriever or docs_retriever(config, evaluator.embedder)
    cfg = config.model_copy(update={"corpus": config.corpus.model_copy(update={"ingest_on_start": False})})
    return RagService(
        cfg,
        local_retriever(RetrieverService(cfg, retriever=retriever)),
        {mid: local_worker(w) for mid, w in evaluator.workers.items()},
        cache=None,
    )


def bench_docsqa(
    config: AppConfig,
    out: str | Path,
    *,
    models: list[str] | None = None,
    policy: str = "single",
    max_tokens: int = 96,
    limit: int | None = None,
    data: str | Path = DOCS_QA,
) -> str:
    from bench.harness import Evaluator, percentile
    from retrieval.grounding import invented_names, restates
    from retrieval.policies.base import Question
    from services.pipeline import AnswerRequest

    rows = read_docs_qa(data)[:limit]
    # "auto" answers as `model: auto` does (the router's choice; with router.cascade on, the cascade), with a
    # worker for every configured model.
    asked = models or [m.id for m in config.models]
    serving = [m.id for m in config.models] if "auto" in asked else asked
    evaluator = Evaluator(config, models=serving)
    retriever = docs_retriever(config, evaluator.embedder)
    # How often the top-k passages hold every key fact, per search mode: the ceiling for the answers.
    r = config.retrieval
    recall = {
        mode: sum(
            judge(
                "\n".join(
                    f"{p.chunk.title}\n{p.chunk.text}"
                    for p in retriever.search(
                        row["question"], r.top_k, mode=mode, candidates=r.hybrid_candidates, rrf_k=r.rrf_k
                    )
                ),
                row["must_include"],
            )[0]
            for row in rows
        )
        for mode in ("dense", "bm25", "hybrid")
    }
    service = docs_service(config, evaluator, retriever)
    ids = asked
    preds: dict[str, list[dict[str, Any]]] = {m: [] for m in ids}
    # As `make run` does at start-up: the corpus's chunks go to the engines that compute their KV ahead,
    # and the questions start once that is done (the figures are the steady state, not the warm-up).
    started = time.perf_counter()
    queued = asyncio.run(service.corpus.precompute_chunks(None))
    for mid in queued:
        reuse = getattr(evaluator.workers[mid].engine, "chunk_reuse", None)
        if reuse is not None and not reuse.wait_idle(3600):
            raise RuntimeError(f"{mid}: the chunk KV of the corpus was not computed within an hour")
    precompute = {
        "seconds": round(time.perf_counter() - started, 1),
        "models": {
            mid: evaluator.workers[mid].engine.chunk_reuse.describe()["precompute"] for mid in queued if queued[mid]
        },
    }

    async def run() -> None:
        for n, row in enumerate(rows):
            for model in ids[n % len(ids) :] + ids[: n % len(ids)]:
                started = time.perf_counter()
                rec = await service.answer(
                    AnswerRequest(
                        question=Question(text=row["question"], style="chat"),
                        model=None if model == "auto" else model,
                        policy=policy,
                        max_tokens=max_tokens,
                    )
                )
                right, missed = judge(rec.answer, row["must_include"])
                cascade = next((s for s in rec.trace if s.get("step") == "cascade"), None)
                # The passages' sentences quoted under the answer (retrieval/evidence.py): the model's own words
                # are what the restatement and invented-name rates judge, and whether they were right without the
                # quotes is kept beside.
                evidence = next((s for s in rec.trace if s.get("step") == "evidence"), None)
                own = own_words(rec.answer)
                preds[model].append(
                    {
                        "id": row["id"],
                        "question": row["question"],
                        "answer": rec.answer,
                        "right": right,
                        "missed": missed,
                        "restated": restates(row["question"], own),
                        "invented": invented_names(own, row["question"], [c.text for c in rec.citations]),
                        "evidence_line": bool(evidence),
                        "evidence_reasons": evidence.get("reasons") if evidence else None,
                        "evidence_ms": round(1000 * evidence.get("seconds", 0.0), 1) if evidence else None,
                        "right_without_line": judge(own, row["must_include"])[0],
                        "latency_s": round(time.perf_counter() - started, 3),
                        "completion_tokens": rec.usage.completion_tokens,
                        "citations": [c.title for c in rec.citations],
                        "answered_by": rec.model,
                        "escalated": bool(cascade and cascade.get("escalated")),
                        "first_answer": cascade.get("answer") if cascade else None,
                        "confidence": cascade.get("confidence") if cascade else None,
                        "sentences": len(rec.support.sentences) if rec.support else 0,
                        "unsupported": rec.support.unsupported if rec.support else 0,
                        "support_ms": round(rec.support.seconds * 1000, 1) if rec.support else None,
                        "unsupported_sentences": [x.text for x in rec.support.sentences if not x.supported]
                        if rec.support
                        else [],
                    }
                )
            print(f"  docsqa {n + 1}/{len(rows)}", flush=True)  # noqa: T201

    asyncio.run(run())
    summary = {
        m: {
            "right": sum(p["right"] for p in ps),
            "questions": len(ps),
            "engine": config.model(m).engine if m != "auto" else "/".join(sorted({x.engine for x in config.models})),
            "escalation_share": round(sum(p["escalated"] for p in ps) / len(ps), 3) if ps else None,
            "evidence_line_share": round(sum(p["evidence_line"] for p in ps) / len(ps), 3) if ps else None,
            "right_without_line": sum(p["right_without_line"] for p in ps),
            # The line's ranking (the embedder's round trip for the lines it has not seen), per answer with a line.
            "median_evidence_ms": statistics.median(p["evidence_ms"] for p in ps if p["evidence_ms"] is not None)
            if any(p["evidence_ms"] is not None for p in ps)
            else None,
            "median_latency_s": round(statistics.median(p["latency_s"] for p in ps), 3) if ps else None,
            "p90_latency_s": round(percentile([p["latency_s"] for p in ps], 0.9), 3) if ps else None,
            "median_completion_tokens": statistics.median(p["completion_tokens"] for p in ps) if ps else None,
            "restatement_rate": round(sum(p["restated"] for p in ps) / len(ps), 3) if ps else None,
            "invented_name_rate": round(sum(bool(p["invented"]) for p in ps) / len(ps), 3) if ps else None,
            # The support check (retrieval/support.py): the share of all answer sentences it calls unsupported,
            # the share of answers with any, and what it cost per answer.
            "unsupported_sentence_rate": round(
                sum(p["unsupported"] for p in ps) / max(1, sum(p["sentences"] for p in ps)), 3
            )
            if ps
            else None,
            "answers_with_unsupported": round(sum(p["unsupported"] > 0 for p in ps) / len(ps), 3) if ps else None,
            "median_support_ms": statistics.median(p["support_ms"] for p in ps if p["support_ms"] is not None)
            if any(p["support_ms"] is not None for p in ps)
            else None,
        }
        for m, ps in preds.items()
    }
    result: dict[str, Any] = {
        "policy": policy,
        "max_tokens": max_tokens,
        "search": config.retrieval.search,
        "top_k": config.retrieval.top_k,
        "set": str(data),
        "facts_in_top_k_passages": {m: f"{n}/{len(rows)}" for m, n in recall.items()},
        "chunk_kv_precompute": precompute,
        "models": summary,
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "docsqa.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "answers.jsonl", "w", encoding="utf-8") as fh:
        for m, ps in preds.items():
            for p in ps:
                fh.write(json.dumps({"model": m, **p}) + "\n")
    lines = [
        "| model | engine | right | right without the quotes | with quotes | median s | p90 s "
        "| median completion tokens | restated | invented names | escalated | unsupported sentences "
        "| answers with one | check ms | quote ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, s in summary.items():
        lines.append(
            f"| {m} | {s['engine']} | {s['right']}/{s['questions']} | {s['right_without_line']}/{s['questions']} "
            f"| {s['evidence_line_share']} | {s['median_latency_s']} | {s['p90_latency_s']} "
            f"| {s['median_completion_tokens']} | {s['restatement_rate']} | {s['invented_name_rate']} "
            f"| {s['escalation_share']} | {s['unsupported_sentence_rate']} | {s['answers_with_unsupported']} "
            f"| {_ms(s['median_support_ms'])} | {_ms(s['median_evidence_ms'])} |"
        )
    facts = ", ".join(f"{m} {n}/{len(rows)}" for m, n in recall.items())
    lines += ["", f"Every key fact in the top {config.retrieval.top_k} passages (search mode: questions): {facts}"]
    table = "\n".join(lines) + "\n"
    (out_dir / "docsqa.md").write_text(table, encoding="utf-8")
    return table
