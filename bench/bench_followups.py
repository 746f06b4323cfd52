"""`ragyard bench followups`: two-turn conversations whose second question leans on the first ("and how many
dimensions does it have?"), answered with each way of searching a follow-up (`retrieval.followup`: off,
history, model) side by side.

The set (``data/followups.jsonl``, written by hand) has, per conversation, the first question and its answer as
the history, the follow-up, a reference answer and the key facts a right answer must hold (``must_include``, as
in the docs-QA set). ``corpus`` says what it is about: ``docs`` (the bundled README and docs/, as `make run`
indexes them) or a dev QA file of ``../shared/data`` (its contexts are the corpus). For each mode the bench
reports how often the top-k passages of the searched query hold every key fact (the ceiling of the answers),
the answers right, their latency, and the restatement and invented-name rates (`retrieval.grounding`).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.bench_docsqa import judge
from services.config import AppConfig

FOLLOWUPS = Path(__file__).with_name("data") / "followups.jsonl"
MODES = ("off", "history", "model")


def read_followups(path: str | Path = FOLLOWUPS) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        ok = r.get("question") and r.get("history") and r.get("must_include") and all(r["must_include"])
        if not ok or r.get("corpus") is None:
            raise ValueError(f"follow-up row {r.get('id')!r} needs corpus, history, question and must_include")
    return rows


def data_file(name: str) -> Path:
    """A dev QA file by name: as given, else in ../shared/data beside the repository."""
    for candidate in (Path(name), Path(__file__).resolve().parents[2] / "shared" / "data" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"follow-up corpus {name!r}: not found as given nor in ../shared/data")


def bench_followups(
    config: AppConfig,
    out: str | Path,
    *,
    model: str | None = None,
    modes: tuple[str, ...] = MODES,
    policy: str = "single",
    max_tokens: int = 96,
    limit: int | None = None,
    data: str | Path = FOLLOWUPS,
) -> str:
    from bench.bench_docsqa import docs_service
    from bench.harness import Evaluator, percentile
    from retrieval import followups
    from retrieval.evidence import own_words
    from retrieval.generation import ChatMessage
    from retrieval.grounding import invented_names, restates
    from retrieval.policies.base import Question
    from services.pipeline import AnswerRequest, RagService

    rows = read_followups(data)[:limit]
    model = model or config.default_model.id
    # "auto" answers as `model: auto` does (with router.cascade on, the cascade), a worker for every model.
    evaluator = Evaluator(config, models=[m.id for m in config.models] if model == "auto" else [model])
    services: dict[str, RagService] = {}
    for corpus in sorted({r["corpus"] for r in rows}):
        services[corpus] = (
            docs_service(config, evaluator) if corpus == "docs" else evaluator.service_for(data_file(corpus))
        )

    def with_mode(svc: RagService, mode: str) -> RagService:
        cfg = svc.config.model_copy(update={"retrieval": svc.config.retrieval.model_copy(update={"followup": mode})})
        return RagService(cfg, svc.retriever, svc.workers, cache=None)

    preds: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    top_k = config.retrieval.top_k

    async def run() -> None:
        for n, row in enumerate(rows):
            history = [ChatMessage(role=m["role"], content=m["content"]) for m in row["history"]]
            base = services[row["corpus"]]
            for mode in modes[n % len(modes) :] + modes[: n % len(modes)]:
                svc = with_mode(base, mode)
                started = time.perf_counter()
                rec = await svc.answer(
                    AnswerRequest(
                        question=Question(text=row["question"], history=history, style="chat"),
                        model=None if model == "auto" else model,
                        policy=policy,
                        max_tokens=max_tokens,
                        top_k=top_k,
                    )
                )
                latency = time.perf_counter() - started
                searched = next((s["query"] for s in rec.trace if s.get("step") == "retrieve"), row["question"])
                passages = [c.text for c in rec.citations]
                found, _ = judge("\n".join(f"{c.title}\n{c.text}" for c in rec.citations), row["must_include"])
                right, missed = judge(rec.answer, row["must_include"])
                # The model's own words, before any quotes of the passages (retrieval/evidence.py): what the
                # restatement and invented-name rates judge, and whether they were right without the quotes.
                own = own_words(rec.answer)
                preds[mode].append(
                    {
                        "id": row["id"],
                        "corpus": row["corpus"],
                        "question": row["question"],
                        "followup": followups.is_followup(row["question"]),
                        "query": searched,
                        "facts_found": found,
                        "answer": rec.answer,
                        "right": right,
                        "missed": missed,
                        "right_without_quotes": judge(own, row["must_include"])[0],
                        "restated": restates(row["question"], own),
                        "invented": invented_names(own, row["question"], passages),
                        "latency_s": round(latency, 3),
                        "completion_tokens": rec.usage.completion_tokens,
                        "answered_by": rec.model,
                        "escalated": any(s.get("step") == "cascade" and s.get("escalated") for s in rec.trace),
                    }
                )
            print(f"  followups {n + 1}/{len(rows)}", flush=True)  # noqa: T201

    asyncio.run(run())

    def summary(ps: list[dict[str, Any]]) -> dict[str, Any]:
        lat = [p["latency_s"] for p in ps]
        by_corpus = {
            c: f"{sum(p['right'] for p in ps if p['corpus'] == c)}/{sum(p['corpus'] == c for p in ps)}"
            for c in sorted({p["corpus"] for p in ps})
        }
        return {
            "right": sum(p["right"] for p in ps),
            "right_without_quotes": sum(p["right_without_quotes"] for p in ps),
            "questions": len(ps),
            "right_by_corpus": by_corpus,
            "facts_in_top_k": sum(p["facts_found"] for p in ps),
            "restatement_rate": round(sum(p["restated"] for p in ps) / len(ps), 3) if ps else None,
            "invented_name_rate": round(sum(bool(p["invented"]) for p in ps) / len(ps), 3) if ps else None,
            "escalation_share": round(sum(p["escalated"] for p in ps) / len(ps), 3) if ps else None,
            "median_latency_s": round(statistics.median(lat), 3) if lat else None,
            "p90_latency_s": round(percentile(lat, 0.9), 3) if lat else None,
        }

    engine = config.model(model).engine if model != "auto" else "/".join(sorted({m.engine for m in config.models}))
    result = {
        "model": model,
        "engine": engine,
        "policy": policy,
        "top_k": top_k,
        "search": config.retrieval.search,
        "set": str(data),
        "questions": len(rows),
        "modes": {m: summary(ps) for m, ps in preds.items()},
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "followups.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "answers.jsonl", "w", encoding="utf-8") as fh:
        for m, ps in preds.items():
            for p in ps:
                fh.write(json.dumps({"mode": m, **p}) + "\n")
    lines = [
        f"{model} ({result['engine']}), policy {policy}, top {top_k} ({config.retrieval.search}), {len(rows)} "
        "conversations",
        "",
        "| follow-up search | facts in top k | right | right without the quotes | right by corpus | restated "
        "| invented names | escalated | median s | p90 s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, s in result["modes"].items():  # type: ignore[attr-defined]
        corpora = ", ".join(f"{c} {v}" for c, v in s["right_by_corpus"].items())
        lines.append(
            f"| {m} | {s['facts_in_top_k']}/{s['questions']} | {s['right']}/{s['questions']} "
            f"| {s['right_without_quotes']}/{s['questions']} | {corpora} "
            f"| {s['restatement_rate']} | {s['invented_name_rate']} | {s['escalation_share']} "
            f"| {s['median_latency_s']} | {s['p90_latency_s']} |"
        )
    table = "\n".join(lines) + "\n"
    (out_dir / "followups.md").write_text(table, encoding="utf-8")
    return table
