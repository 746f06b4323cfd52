"""Training on the ladder's labels: balanced accuracy, class weights, one- vs multi-hop scores, and a
real (small) training from runs with the real embedder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.features import LEXICAL_NAMES
from router.training import balanced_accuracy, fit


@pytest.mark.unit
def test_balanced_accuracy_is_the_mean_recall() -> None:
    y = np.array([0, 0, 0, 0, 1])
    assert balanced_accuracy(y, np.zeros(5, dtype=int)) == 0.5  # a constant guess
    assert balanced_accuracy(y, np.array([0, 0, 0, 1, 1])) == pytest.approx((0.75 + 1.0) / 2)


@pytest.mark.unit
def test_fit_scores_hops_out_of_fold() -> None:
    rng = np.random.default_rng(0)
    n = 90
    labels = [("A", "B", "C")[i % 3] for i in range(n)]
    x = rng.normal(size=(n, 384 + len(LEXICAL_NAMES)))
    x[:, :50] += np.array([3.0 * ("ABC".index(label)) for label in labels])[:, None]  # separable
    hops = [2 if label == "C" else 1 for label in labels]
    _, metrics = fit(x, labels, class_weight="balanced", hops=hops)
    assert metrics["class_weight"] == "balanced"
    assert metrics["cv_balanced_accuracy"] > 0.9
    assert metrics["cv_hops"]["multi_hop"] == 30 and metrics["cv_hops"]["balanced_accuracy"] > 0.9


def _run(qid: str, question: str, hops: int, model: str, policy: str, f1: float) -> dict[str, Any]:
    return {
        "file": "f.jsonl",
        "id": qid,
        "question": question,
        "hops": hops,
        "model": model,
        "policy": policy,
        "em": float(f1 == 1.0),
        "f1": f1,
        "latency_s": 1.0 if model == "small" else 2.0,
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "llm_calls": 1,
    }


@pytest.mark.integration
def test_train_from_runs_writes_artifact_labels_and_metrics(tmp_path: Path) -> None:
    from bench.train_router import train_from_runs
    from router.classifier import ComplexityClassifier
    from services.config import load_config

    runs = []
    for i in range(12):
        runs.append(_run(f"a{i}", f"Is item {i} a fruit?", 1, "small", "none", 1.0))
        runs += [
            _run(f"c{i}", f"Who directed the film {i} whose lead actor was born where?", 2, m, p, 0.0)
            for m in ("small", "big")
            for p in ("none", "single", "multi")
        ]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    bias = tmp_path / "bias.jsonl"
    bias.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"b{i}",
                    "question": f"Which river flows past the town {i} founded by whom?",
                    "answers": [],
                    "hops": 2,
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    metrics = train_from_runs(
        load_config({}), path, tmp_path / "out", c_grid=(0.1, 1.0), bias_data=[str(bias)], bias_limit=3
    )
    assert metrics["label_counts"] == {"A": 12, "B": 0, "C": 15}
    assert metrics["label_sources"] == {"none": 12, "inductive bias": 12, "inductive bias (no answers)": 3}
    assert set(metrics["c_search_cv_balanced_accuracy"]) == {"0.1", "1.0"}
    clf = ComplexityClassifier.load(tmp_path / "out" / "complexity-v1.npz", expected_dim=384)
    assert clf.header["metrics"]["cv_hops"]["balanced_accuracy"] > 0.9
    labels = [json.loads(line) for line in (tmp_path / "out" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 27 and {r["label"] for r in labels} == {"A", "C"}
