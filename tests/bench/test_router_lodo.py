"""`ragyard bench router --leave-one-out`: a dataset left out is scored by a classifier that never saw it, so a
cue every dataset shares carries over and a cue one dataset alone holds does not."""

from __future__ import annotations

import numpy as np
import pytest

from bench.router_lodo import DATASET_OF, score_left_out

pytestmark = pytest.mark.unit


def _rows(rng: np.random.Generator, name: str, n: int, multi: bool, own: int) -> tuple[np.ndarray, list[str]]:
    x = rng.normal(0, 1, (n, 6))
    x[:, 0] += 5.0 if multi else -5.0  # the cue every dataset shares
    x[:, own] += 2.0  # a style of its own (feature 1..5)
    return x, ["C" if multi else "B"] * n


def test_a_shared_cue_carries_over_and_a_dataset_of_its_own_kind_is_scored_by_recall() -> None:
    rng = np.random.default_rng(0)
    parts = [("hotpot", True, 1), ("fanout", True, 2), ("nq", False, 3), ("boolq", False, 4), ("squad", False, 5)]
    xs, labels, names, multi = [], [], [], []
    for name, is_multi, own in parts:
        x, y = _rows(rng, name, 60, is_multi, own)
        xs.append(x)
        labels += y
        names += [name] * 60
        multi += [is_multi] * 60
    per, predicted = score_left_out(np.vstack(xs), labels, np.asarray(names), np.asarray(multi), c=1.0)
    assert set(per) == {p[0] for p in parts}
    for name, is_multi, _ in parts:
        assert per[name]["recall"] > 0.8 and per[name]["trained_on"] == 240
        assert per[name]["multi_hop_share"] == (1.0 if is_multi else 0.0)
    assert predicted.sum() == pytest.approx(120, abs=10)


def test_a_cue_one_dataset_alone_holds_does_not_carry_over() -> None:
    rng = np.random.default_rng(1)
    xs, labels, names, multi = [], [], [], []
    for name, is_multi in (("hotpot", True), ("nq", False), ("boolq", False)):
        x = rng.normal(0, 1, (80, 3))
        if is_multi:
            x[:, 1] += 4.0  # multi-hop only by a style no other dataset has
        xs.append(x)
        labels += ["C" if is_multi else "B"] * 80
        names += [name] * 80
        multi += [is_multi] * 80
    per, _ = score_left_out(np.vstack(xs), labels, np.asarray(names), np.asarray(multi), c=1.0)
    # Left out, the only multi-hop dataset has nothing to learn class C from: never predicted.
    assert per["hotpot"]["class_c_share"] == 0.0 and per["hotpot"]["recall"] == 0.0
    assert per["nq"]["recall"] > 0.8


def test_files_of_one_dataset_are_left_out_together() -> None:
    assert DATASET_OF["dev_boolq.jsonl"] == DATASET_OF["train_boolq.jsonl"]
    assert DATASET_OF["dev_hotpotqa.jsonl"] == DATASET_OF["hotpotqa-beir.jsonl"]
