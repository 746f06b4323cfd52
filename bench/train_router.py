"""`ragyard train-router`: collect Adaptive-RAG labels on the training half of each file, train the
complexity classifier, write the artifact with its metrics. One command reproduces the shipped
artifact; label collection resumes from ``OUT/labels.jsonl`` when rerun."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from bench.harness import Evaluator, read_rows
from retrieval.policies.base import Question
from retrieval.policies.registry import label_ladder
from router.features import feature_vector
from router.labels import QARow, QuestionLabel, bias_label, collect, split_rows
from router.training import fit
from services.config import AppConfig
from services.pipeline import AnswerRequest, RagService


def split_ids(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([r.get("id") for r in rows]).encode()).hexdigest()[:16]


def train_router(
    config: AppConfig,
    data: list[str],
    out: str | Path,
    *,
    seed: int = 0,
    train_fraction: float = 0.5,
    limit: int | None = None,
    max_tokens: int = 32,
    version: str = "complexity-v1",
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluator = evaluator or Evaluator(config)
    labelled: list[QuestionLabel] = []
    splits: dict[str, Any] = {}
    started = time.perf_counter()
    for path in data:
        rows = read_rows(path)
        train, test = split_rows(rows, seed, train_fraction)
        if limit is not None:
            train = train[:limit]
        splits[Path(path).name] = {
            "train": len(train),
            "test": len(test),
            "train_ids": split_ids(train),
            "test_ids": split_ids(test),
        }
        service = evaluator.service_for(path)
        labelled += asyncio.run(
            _label(service, cast(list[QARow], train), out_dir / "labels.jsonl", max_tokens, Path(path).name)
        )
    vectors = evaluator.embedder.encode([r["question"] for r in labelled])
    x = np.stack([feature_vector(v, r["question"]) for v, r in zip(vectors, labelled, strict=True)])
    clf, metrics = fit(x, [r["label"] for r in labelled], seed=seed)
    metrics.update(
        {
            "splits": splits,
            "seed": seed,
            "train_fraction": train_fraction,
            "label_sources": _count(r["source"] for r in labelled),
            "labelling_seconds": round(time.perf_counter() - started, 1),
        }
    )
    clf.header.update({"version": version, "metrics": metrics, "embedder": evaluator.embedder.name})
    clf.save(out_dir / f"{version}.npz")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


async def _label(service: RagService, rows: list[QARow], out: Path, max_tokens: int, name: str) -> list[QuestionLabel]:
    async def answer(question: str, policy: str) -> str:
        rec = await service.answer(
            AnswerRequest(
                question=Question(text=question, style="short"), policy=policy, max_tokens=max_tokens, stop=("\n",)
            )
        )
        return rec.answer

    def progress(n: int, total: int) -> None:
        if n % 10 == 0 or n == total:
            print(f"  labels {name}: {n}/{total}", flush=True)  # noqa: T201

    return await collect(rows, answer, out, progress)


C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


def train_from_runs(
    config: AppConfig,
    runs_path: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    version: str = "complexity-v1",
    c_grid: tuple[float, ...] = C_GRID,
    bias_data: list[str] | None = None,
    bias_limit: int = 300,
) -> dict[str, Any]:
    """Train the classifier on the ladder's labels (``ragyard collect-ladder``: the simplest policy some
    model answers right, inductive bias where none does). The regularisation C is chosen on the
    training labels alone, by cross-validated balanced accuracy; the held-out halves stay for
    `ragyard bench router`. Writes the artifact, ``labels.jsonl`` (what it was trained on, so the bench
    can prove its questions are unseen) and ``metrics.json``.

    ``bias_data``: files whose rows can be neither answered nor scored (no answers ship, as with BEIR's
    HotpotQA queries): the first ``bias_limit`` rows of each one's training half join with the dataset's
    inductive-bias label, as Adaptive-RAG labels what no strategy answers."""
    from bench.ladder import read_runs
    from retrieval.embedder import Embedder
    from router.quality import build_table, ladder_labels

    runs = list(read_runs(Path(runs_path)).values())
    if not runs:
        raise ValueError(f"{runs_path}: no ladder runs to learn from")
    model_cost = {m: sum(v["latency_s"] for v in ps.values()) / len(ps) for m, ps in build_table(runs)["cost"].items()}
    labelled = ladder_labels(runs, model_cost)
    # Each label keeps the F1 its policies got (mean over the models that tried them): the SLA controller's
    # per-policy fallback table (router.planning.Planner.measured_quality) is read from these.
    f1s: dict[tuple[Any, Any, str], list[float]] = {}
    for r in runs:
        f1s.setdefault((r["file"], r["id"], r["policy"]), []).append(float(r["f1"]))
    for rec in labelled:
        rec["tried"] = {
            p: {"f1": round(sum(v) / len(v), 4)}
            for p, _ in label_ladder()
            if (v := f1s.get((rec["file"], rec["id"], p)))
        }
    seen = {r["question"] for r in labelled}
    for path in bias_data or []:
        train, _ = split_rows(read_rows(path), seed, 0.5)
        for row in train[:bias_limit]:
            if row["question"] in seen:
                continue
            seen.add(row["question"])
            labelled.append(
                {
                    "file": Path(path).name,
                    "id": row.get("id"),
                    "question": row["question"],
                    "hops": row.get("hops"),
                    "label": bias_label(row.get("hops")),
                    "source": "inductive bias (no answers)",
                    "model": None,
                }
            )
    embedder = Embedder(config.embedder.path, device=config.embedder.device)
    vectors = embedder.encode([r["question"] for r in labelled])
    x = np.stack([feature_vector(v, r["question"]) for v, r in zip(vectors, labelled, strict=True)])
    labels = [r["label"] for r in labelled]
    hops = [r.get("hops") for r in labelled]
    search = {}
    for c in c_grid:
        _, m = fit(x, labels, seed=seed, c=c, class_weight="balanced", hops=hops)
        search[str(c)] = m.get("cv_balanced_accuracy", 0.0)
    best_c = max(c_grid, key=lambda c: search[str(c)])
    clf, metrics = fit(x, labels, seed=seed, c=best_c, class_weight="balanced", hops=hops)
    metrics.update(
        {
            "c_search_cv_balanced_accuracy": search,
            "seed": seed,
            "runs": len(runs),
            "bias_data": {Path(p).name: bias_limit for p in bias_data or []},
            "train_fraction": 0.5,
            "label_sources": _count(r["source"] for r in labelled),
            "files": _count(r["file"] for r in labelled),
            "labels_by_file": {
                f: _count(r["label"] for r in labelled if r["file"] == f) for f in sorted({r["file"] for r in labelled})
            },
        }
    )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    clf.header.update({"version": version, "metrics": metrics, "embedder": embedder.name})
    clf.save(out_dir / f"{version}.npz")
    with (out_dir / "labels.jsonl").open("w", encoding="utf-8") as fh:
        for label in labelled:
            fh.write(json.dumps(label) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
