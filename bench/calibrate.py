"""`ragyard calibrate-dragin`: choose DRAGIN's RIND threshold on the training half of multi-hop files.

Runs `multi` once and `dragin` at every candidate threshold on the same training questions (the held-out
half stays untouched for `bench policies`), then recommends the threshold with the best F1 among those
that retrieve less often than `multi`; ties go to fewer retrievals. Writes `DIR/dragin.json` and a
markdown table; the chosen value goes into `retrieval.dragin_threshold` by hand (or by env), so a
calibration never silently changes a running config.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from bench.harness import Evaluator, read_rows, summarise
from services.config import AppConfig


def recommend(multi: dict[str, Any], candidates: dict[float, dict[str, Any]]) -> float | None:
    """Best F1 among thresholds retrieving less than `multi` (fewer retrievals breaks ties); None if none does."""
    fewer = {t: m for t, m in candidates.items() if m["retrieval_steps_mean"] < multi["retrieval_steps_mean"]}
    if not fewer:
        return None
    return max(fewer, key=lambda t: (fewer[t]["f1"], -fewer[t]["retrieval_steps_mean"]))


def calibrate_dragin(
    config: AppConfig,
    data: list[str],
    out: str | Path,
    thresholds: list[float],
    *,
    seed: int = 0,
    limit: int | None = None,
    max_tokens: int = 32,
) -> str:
    from router.labels import split_rows

    if not thresholds or any(t <= 0 for t in thresholds):
        raise ValueError("--thresholds needs positive numbers, e.g. 0.1,0.2,0.4")
    base = Evaluator(config)
    rows_by_file = {}
    for path in data:
        train, _ = split_rows(read_rows(path), seed)
        rows_by_file[path] = train[:limit] if limit is not None else train
    preds: dict[str, list[dict[str, Any]]] = {"multi": []}
    for t in thresholds:
        preds[f"dragin@{t:g}"] = []
    for path, rows in rows_by_file.items():
        services = {"multi": base.service_for(path)}
        for t in thresholds:
            cfg = config.model_copy(update={"retrieval": config.retrieval.model_copy(update={"dragin_threshold": t})})
            services[f"dragin@{t:g}"] = Evaluator(cfg, worker=base.worker, embedder=base.embedder).service_for(path)

        async def run_rows(
            rows: list[dict[str, Any]] = rows, services: dict[str, Any] = services, name: str = Path(path).name
        ) -> None:
            for n, row in enumerate(rows, start=1):
                for key, service in services.items():
                    policy = "multi" if key == "multi" else "dragin"
                    preds[key].append(await base.answer_row(service, row, policy, max_tokens=max_tokens, n=n))
                if n % 5 == 0 or n == len(rows):
                    line = " ".join(
                        f"{k}={statistics.fmean(x['f1'] for x in v):.3f}/"
                        f"{statistics.fmean(x['retrieval_steps'] for x in v):.2f}"
                        for k, v in preds.items()
                    )
                    print(f"  {name} {n}/{len(rows)} f1/retrievals: {line}", flush=True)  # noqa: T201

        asyncio.run(run_rows())
    names = "+".join(Path(d).name for d in data)
    metrics = {k: summarise(v, policy=k.split("@")[0], data=names) for k, v in preds.items()}
    by_t = {t: metrics[f"dragin@{t:g}"] for t in thresholds}
    chosen = recommend(metrics["multi"], by_t)
    result = {
        "model": config.default_model.id,
        "split": {"seed": seed, "half": "train"},
        "questions": sum(len(r) for r in rows_by_file.values()),
        "multi": metrics["multi"],
        "dragin": {f"{t:g}": m for t, m in by_t.items()},
        "recommended_threshold": chosen,
        "rule": "best F1 among thresholds with fewer retrieval steps than multi; ties to fewer retrievals",
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dragin.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["| run | EM | F1 | retrieval steps | mean s |", "| --- | --- | --- | --- | --- |"]
    for key, m in metrics.items():
        lines.append(
            f"| {key} | {m['em']:.3f} | {m['f1']:.3f} | {m['retrieval_steps_mean']:.2f} | {m['mean_latency_s']:.2f} |"
        )
    table = "\n".join(lines) + f"\n\nrecommended threshold: {chosen}\n"
    (out_dir / "dragin.md").write_text(table, encoding="utf-8")
    return table
