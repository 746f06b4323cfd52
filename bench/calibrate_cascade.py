"""`ragyard calibrate-cascade`: the confidence cascade's threshold (`router.cascade.min_confidence`), chosen so a
target share of first answers escalates.

The first model answers every calibration question (the docs-QA set by default: chat answers over the bundled
docs, the use the cascade is for) with its tokens' log-probabilities; each answer's confidence is computed as the
pipeline computes it (`retrieval.grounding.confidence`) and judged right or wrong by its key facts. The threshold
is the confidence below which ``escalate_share`` of the answers fall (answers with a hard failure, confidence 0,
always escalate, so the share achieved may be higher). Reported beside it: how many of the escalated answers
were wrong (what escalating can fix) and how many of the kept ones were right. The questions the threshold is
then judged on (`ragyard bench followups`, `bench docsqa` report the escalation share and the answers) should
be other ones; the follow-up set is.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from bench.bench_docsqa import DOCS_QA, docs_service, judge, read_docs_qa
from services.config import AppConfig


def threshold_for(scores: list[float], share: float) -> float:
    """The lowest threshold that escalates at least ``share`` of ``scores`` (escalation: score < threshold)."""
    if not scores:
        raise ValueError("no answers to calibrate on")
    ordered = sorted(scores)
    k = min(len(ordered), max(1, math.ceil(share * len(ordered))))
    if k == len(ordered):
        return 1.0
    # Escalate the k lowest: a threshold just above the k-th lowest and at or below the next one.
    return round((ordered[k - 1] + ordered[k]) / 2, 4) if ordered[k] > ordered[k - 1] else ordered[k - 1] + 1e-4


def calibrate_cascade(
    config: AppConfig,
    out: str | Path,
    *,
    escalate_share: float,
    model: str | None = None,
    data: str | Path = DOCS_QA,
    limit: int | None = None,
    max_tokens: int = 96,
) -> str:
    from bench.harness import Evaluator
    from retrieval.grounding import confidence
    from retrieval.policies.base import Question
    from services.pipeline import AnswerRequest

    if not 0 < escalate_share < 1:
        raise ValueError("--escalate-share must be between 0 and 1")
    model = model or config.default_model.id
    rows = read_docs_qa(data)[:limit]
    service = docs_service(config, Evaluator(config, models=[model]))
    answers: list[dict[str, Any]] = []

    async def run() -> None:
        for n, row in enumerate(rows):
            rec = await service.answer(
                AnswerRequest(question=Question(text=row["question"]), model=model, max_tokens=max_tokens, logprobs=0)
            )
            conf = confidence(
                row["question"],
                rec.answer,
                [c.text for c in rec.citations],
                [t["logprob"] for t in rec.logprobs or []],
            )
            right, _ = judge(rec.answer, row["must_include"])
            answers.append(
                {"id": row["id"], "answer": rec.answer, "right": right, "confidence": conf.score, "why": conf.reasons}
            )
            print(f"  calibrate-cascade {n + 1}/{len(rows)}", flush=True)  # noqa: T201

    asyncio.run(run())
    threshold = threshold_for([a["confidence"] for a in answers], escalate_share)
    escalated = [a for a in answers if a["confidence"] < threshold]
    kept = [a for a in answers if a["confidence"] >= threshold]
    result = {
        "model": model,
        "set": str(data),
        "questions": len(answers),
        "target_escalate_share": escalate_share,
        "min_confidence": threshold,
        "escalate_share": round(len(escalated) / len(answers), 3),
        "escalated_wrong": f"{sum(not a['right'] for a in escalated)}/{len(escalated)}",
        "kept_right": f"{sum(a['right'] for a in kept)}/{len(kept)}",
        "right_first": sum(a["right"] for a in answers),
        "hard_failures": sum(a["confidence"] == 0.0 for a in answers),
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cascade.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "answers.jsonl", "w", encoding="utf-8") as fh:
        for a in answers:
            fh.write(json.dumps(a) + "\n")
    table = (
        f"{model} on {len(answers)} questions of {Path(data).name}: right first time {result['right_first']}; "
        f"router.cascade.min_confidence: {threshold} escalates {result['escalate_share']:.0%} (target "
        f"{escalate_share:.0%}); of those {result['escalated_wrong']} were wrong; of the kept, {result['kept_right']} "
        f"right\n"
    )
    (out_dir / "cascade.md").write_text(table, encoding="utf-8")
    return table
