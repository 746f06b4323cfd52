"""`ragyard bench ...`: benchmarks that write JSON plus a short markdown table."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from services.config import AppConfig
from services.evaluation.harness import percentile, read_rows


def run_bench(what: str, config: AppConfig, args: argparse.Namespace) -> str:
    if what == "router":
        return bench_router(config, args.data or [], args.out, repeats=args.repeats)
    raise ValueError(f"unknown benchmark {what!r}")


def bench_router(config: AppConfig, data: list[str], out: str | Path, *, repeats: int = 200) -> str:
    """The router's decision time beyond the shared query embedding, per question (median of repeats)."""
    import numpy as np

    from retrieval.embedder import Embedder
    from router.router import ConfigRouter

    router = ConfigRouter(config, embedding_dim=384)
    if router.classifier is None:
        raise ValueError(f"no classifier to measure: {router.classifier_error}")
    questions = [r["question"] for path in data for r in read_rows(path)] or [
        "Which engine is the embedded default?",
        "Were Scott Derrickson and Ed Wood of the same nationality?",
    ]
    embedder = Embedder(config.embedder.path, device=config.embedder.device)
    embed_times, decide_times = [], []
    vectors = []
    for q in questions:
        start = time.perf_counter()
        vectors.append(embedder.encode([q])[0])
        embed_times.append(time.perf_counter() - start)
    for _ in range(3):  # warm up numpy
        router.classify(questions[0], vectors[0])
    for q, v in zip(questions, vectors, strict=True):
        runs = []
        for _ in range(max(1, repeats // 10)):
            start = time.perf_counter()
            router.route(q, policy="adaptive", embedding=v)
            runs.append(time.perf_counter() - start)
        decide_times.append(statistics.median(runs))
    result: dict[str, Any] = {
        "questions": len(questions),
        "classifier": router.classifier.header.get("version"),
        "decision_ms": {
            "p50": round(percentile(decide_times, 0.5) * 1000, 4),
            "p95": round(percentile(decide_times, 0.95) * 1000, 4),
            "max": round(max(decide_times) * 1000, 4),
        },
        "query_embedding_ms": {
            "p50": round(percentile(embed_times, 0.5) * 1000, 3),
            "p95": round(percentile(embed_times, 0.95) * 1000, 3),
        },
        "class_counts": _classes(router, questions, vectors),
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "numpy": np.__version__},
        "target": "decision p50 under 2 ms beyond the shared embedding",
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "router.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = (
        "| what | p50 ms | p95 ms |\n| --- | --- | --- |\n"
        f"| router decision (classify + plan) | {result['decision_ms']['p50']} | {result['decision_ms']['p95']} |\n"
        f"| query embedding (shared with retrieval) | {result['query_embedding_ms']['p50']} | "
        f"{result['query_embedding_ms']['p95']} |\n"
    )
    (out_dir / "router.md").write_text(table, encoding="utf-8")
    return table


def _classes(router: Any, questions: list[str], vectors: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q, v in zip(questions, vectors, strict=True):
        label = router.classify(q, v)["class"]
        counts[label] = counts.get(label, 0) + 1
    return counts


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
