"""`ragyard bench router --leave-one-out`: does the complexity classifier carry over to a dataset it never saw?

Held-out rows of the training datasets flatter a classifier: it learns each dataset's style (BoolQ's lower-case
yes/no questions, HotpotQA's bridge questions) as much as how many hops a question needs. Here each dataset is
left out in turn: the classifier is trained with the shipped recipe (features, balanced class weights, the
artifact's regularisation) on the labels of every other dataset, and predicts every question of the one left
out, whose one- vs multi-hop truth is the dataset's own (class C predicts multi-hop). Beside the labelled
training sets (``labels.jsonl``: the ladder's labels) it adds single-hop questions that pyserini's jar ships
(DPR's Natural Questions, TriviaQA, SQuAD, WebQuestions), labelled by inductive bias (B), so the single-hop side
is not two datasets' style alone.

Each left-out dataset holds one kind of question, so its "balanced accuracy" is its recall (a multi-hop set's
share predicted C, a single-hop set's share not); the pooled row scores every question by the model that did not
see its dataset, over both kinds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# Files of one dataset are left out together (BoolQ's dev and train rows; HotpotQA's dev rows and BEIR's queries).
DATASET_OF = {
    "dev_boolq.jsonl": "boolq",
    "train_boolq.jsonl": "boolq",
    "dev_hotpotqa.jsonl": "hotpotqa",
    "hotpotqa-beir.jsonl": "hotpotqa",
    "disflqa.jsonl": "disflqa",
    "fanoutqa.jsonl": "fanoutqa",
}
EXTRA_SETS = {"nq": "nq-dev", "triviaqa": "trivia-dev", "squad": "squad-test", "webquestions": "wq-test"}


def lodo_rows(labels_path: Path, extra_per_set: int, seed: int = 0) -> list[dict[str, Any]]:
    """(dataset, question, label, hops) of the training labels and the packaged single-hop sets."""
    from bench.datasets import question_set

    rows = []
    for line in labels_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            name = DATASET_OF.get(rec["file"], Path(rec["file"]).stem)
            rows.append({"dataset": name, "question": rec["question"], "label": rec["label"], "hops": rec.get("hops")})
    seen = {r["question"] for r in rows}
    rng = np.random.default_rng(seed)
    for name, source in EXTRA_SETS.items():
        questions = [q for q, _ in question_set(source) if q not in seen]
        for i in rng.permutation(len(questions))[:extra_per_set]:
            rows.append({"dataset": name, "question": questions[int(i)], "label": "B", "hops": 1})
    return rows


def score_left_out(
    x: np.ndarray, labels: list[str], datasets: np.ndarray, multi: np.ndarray, *, c: float, seed: int = 0
) -> tuple[dict[str, Any], np.ndarray]:
    """For each dataset: the classifier fitted on every other dataset's rows predicts its rows; class C predicts
    multi-hop. Returns each dataset's figures and every row's prediction by the model that did not see it."""
    from router.training import fit

    predicted = np.zeros(len(labels), dtype=bool)
    per: dict[str, Any] = {}
    for name in sorted(set(datasets.tolist())):
        held = datasets == name
        train = ~held
        seen = [y for y, keep in zip(labels, train, strict=True) if keep]
        if len(set(seen)) < 2:
            # One class left to learn from: it is the only answer such a classifier can give.
            guess = np.full(int(held.sum()), seen[0] == "C" if seen else False)
        else:
            clf, _ = fit(x[train], seen, seed=seed, c=c, class_weight="balanced")
            guess = clf.predict_proba(x[held]).argmax(axis=1) == clf.classes.index("C")
        predicted[held] = guess
        truth = multi[held]
        per[name] = {
            "questions": int(held.sum()),
            "multi_hop_share": round(float(truth.mean()), 4),
            "class_c_share": round(float(guess.mean()), 4),
            "recall": round(float((guess == truth).mean()), 4),
            "trained_on": int(train.sum()),
        }
    return per, predicted


def leave_one_dataset_out(
    config: Any, out: str | Path, *, extra_per_set: int = 400, seed: int = 0, c: float | None = None
) -> str:
    from retrieval.embedder import Embedder
    from router.classifier import ComplexityClassifier
    from router.features import feature_vector
    from router.training import balanced_accuracy

    artifact = Path(config.router.artifact or "")
    labels_path = artifact.with_name("labels.jsonl")
    if not labels_path.is_file():
        raise ValueError(f"{labels_path}: the classifier's training labels are needed (ragyard train-router)")
    if c is None:
        c = float(ComplexityClassifier.load(artifact).header.get("metrics", {}).get("c", 0.1))
    rows = lodo_rows(labels_path, extra_per_set, seed)
    embedder = Embedder(config.embedder.path, device=config.embedder.device)
    vectors = embedder.encode([r["question"] for r in rows])
    x = np.stack([feature_vector(v, r["question"]) for v, r in zip(vectors, rows, strict=True)])
    datasets = np.asarray([r["dataset"] for r in rows])
    multi = np.asarray([(r["hops"] or 1) >= 2 for r in rows])
    per, predicted = score_left_out(x, [r["label"] for r in rows], datasets, multi, c=c, seed=seed)
    from bench.reports import write_report

    results = {
        "datasets": per,
        "pooled": {
            "questions": len(rows),
            "balanced_accuracy": round(balanced_accuracy(multi, predicted), 4),
            "multi_hop_share": round(float(multi.mean()), 4),
            "class_c_share": round(float(predicted.mean()), 4),
        },
        "worst_recall": min(d["recall"] for d in per.values()),
    }
    goals = {"recall": ">= 0.70 on every dataset left out", "class_c_share": "within 10 points of its multi-hop share"}
    return write_report(out, "router-lodo", goals, results, {"c": c, "extra_per_set": extra_per_set}, _table)


def _table(report: dict[str, Any]) -> str:
    res = report["results"]
    table = (
        "| dataset left out | questions | multi-hop share | class C share | recall |\n| --- | --- | --- | --- | --- |\n"
    )
    for name, d in res["datasets"].items():
        table += f"| {name} | {d['questions']} | {d['multi_hop_share']} | {d['class_c_share']} | {d['recall']} |\n"
    pooled = res["pooled"]
    return table + (
        f"| pooled (balanced accuracy) | {pooled['questions']} | {pooled['multi_hop_share']} | "
        f"{pooled['class_c_share']} | {pooled['balanced_accuracy']} |\n"
    )
