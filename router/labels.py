"""Adaptive-RAG's automatic labels: the simplest strategy that answers a training question
correctly is its label (none → A, single → B, multi → C); where none does, the dataset's
inductive bias decides (single-hop → B, multi-hop → C)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NotRequired, TypeVar

import numpy as np
from typing_extensions import TypedDict

from core.scoring import score
from retrieval.policies.registry import label_ladder

logger = logging.getLogger(__name__)

CORRECT_F1 = 0.5

T = TypeVar("T")


class QARow(TypedDict):
    """A question of a QA file (`../shared/data`, the datasets' loaders): its gold answers, and its hop
    count where the dataset says (1 single-hop, 2 or more multi-hop)."""

    question: str
    answers: list[str]
    id: NotRequired[str]
    hops: NotRequired[int | None]


class Tried(TypedDict):
    prediction: str
    em: float
    f1: float


class QuestionLabel(TypedDict):
    id: str | None
    question: str
    hops: int | None
    label: str  # A, B or C
    source: str  # the policy that answered it, or "inductive bias"
    tried: dict[str, Tried]  # by policy, the ones tried before it


def is_correct(em: float, f1: float) -> bool:
    return em >= 1.0 or f1 >= CORRECT_F1


def bias_label(hops: int | None) -> str:
    return "C" if (hops or 1) >= 2 else "B"


def split_rows(rows: list[T], seed: int, train_fraction: float = 0.5) -> tuple[list[T], list[T]]:
    """A fixed, seed-determined split of one file's rows into train and test halves."""
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = int(round(len(rows) * train_fraction))
    train = sorted(order[:cut].tolist())
    test = sorted(order[cut:].tolist())
    return [rows[i] for i in train], [rows[i] for i in test]


async def label_question(row: QARow, answer: Callable[[str, str], Awaitable[str]]) -> QuestionLabel:
    tried: dict[str, Tried] = {}
    for policy, label in label_ladder():
        prediction = await answer(row["question"], policy)
        em, f1, _ = score(prediction, row["answers"])
        tried[policy] = {"prediction": prediction, "em": em, "f1": round(f1, 4)}
        if is_correct(em, f1):
            return {
                "id": row.get("id"),
                "question": row["question"],
                "hops": row.get("hops"),
                "label": label,
                "source": policy,
                "tried": tried,
            }
    return {
        "id": row.get("id"),
        "question": row["question"],
        "hops": row.get("hops"),
        "label": bias_label(row.get("hops")),
        "source": "inductive bias",
        "tried": tried,
    }


async def collect(
    rows: list[QARow],
    answer: Callable[[str, str], Awaitable[str]],
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[QuestionLabel]:
    """Label every row; with ``out``, finished rows are appended there and skipped on a rerun."""
    done: dict[str, QuestionLabel] = {}
    if out is not None and out.exists():
        for line in out.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                done[str(rec["id"])] = rec
    labelled = []
    for n, row in enumerate(rows, start=1):
        key = str(row.get("id"))
        if key in done:
            labelled.append(done[key])
            continue
        rec = await label_question(row, answer)
        labelled.append(rec)
        if out is not None:
            with open(out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
        if progress is not None:
            progress(n, len(rows))
    return labelled
