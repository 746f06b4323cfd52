"""`ragyard plan --data FILE --out DIR`: the plan `/v1/qa` would run for each question, without answering.

Only the embedder (the classifier's input) and the router load; no model generates. One row a question
in ``DIR/plans.jsonl``: ``id``, ``policy`` (what runs: for `adaptive`, the policy it picked), ``model``,
``complexity`` (``label`` A/B/C or null, and ``probabilities``), the plan's reason and its routing.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from router.routing import ADAPTIVE
from services.config import AppConfig


def read_questions(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from exc
            if not isinstance(row, dict) or not str(row.get("question", "")).strip():
                raise ValueError(f'{path}:{lineno}: a row needs a non-empty "question"')
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def plan_row(row: dict[str, Any], n: int, decision: Any) -> dict[str, Any]:
    plan = decision.plan
    complexity = plan.complexity
    runs = complexity.policy if complexity is not None and plan.policy == ADAPTIVE else plan.policy
    return {
        "id": row.get("id", str(n)),
        "question": row["question"],
        "policy": runs,
        "model": plan.model,
        "complexity": {
            "label": complexity.cls if complexity else None,
            "probabilities": complexity.probabilities if complexity else None,
        },
        "reason": decision.reason,
        **({"routing": plan.routing} if plan.routing else {}),
        **({"hops": row["hops"]} if "hops" in row else {}),
    }


def write_plans(
    config: AppConfig,
    data: str | Path,
    out: str | Path,
    *,
    policy: str | None = ADAPTIVE,
    model: str | None = "auto",
    limit: int | None = None,
    embedder: Any = None,
) -> dict[str, Any]:
    from retrieval.embedder import Embedder
    from router.plan import RouteRequest
    from services.deployments.router import RouterService

    rows = read_questions(data, limit)
    router = RouterService(config)
    embedder = embedder or Embedder(config.embedder.path, device=config.embedder.device)
    vectors = embedder.encode([r["question"] for r in rows]) if router.needs_embedding(policy, model) else None
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with open(out_dir / "plans.jsonl", "w", encoding="utf-8") as fh:
        for n, row in enumerate(rows):
            decision = asyncio.run(
                router.route(
                    RouteRequest(
                        question=row["question"],
                        dry_run=True,
                        policy=policy,
                        model=model,
                        embedding=None if vectors is None else [float(x) for x in vectors[n]],
                    )
                )
            )
            rec = plan_row(row, n, decision)
            written.append(rec)
            fh.write(json.dumps(rec) + "\n")
    return {
        "plans": str(out_dir / "plans.jsonl"),
        "questions": len(written),
        "policies": dict(Counter(r["policy"] for r in written)),
        "models": dict(Counter(r["model"] for r in written)),
        "classes": dict(Counter(str(r["complexity"]["label"]) for r in written)),
    }
