"""Ladder collection: questions round robin across files, resumable runs that survive a cut-short line,
and one real (small) collection that a rerun does not repeat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.ladder import _append, collect_ladder, read_runs, run_key, training_rows


@pytest.mark.unit
def test_training_rows_interleave_files_and_use_only_training_halves(shared_data: Path) -> None:
    from bench.harness import read_rows
    from router.labels import split_rows

    rows = training_rows(
        [str(shared_data / "dev_hotpotqa.jsonl")], [str(shared_data / "train_boolq.jsonl")], seed=0, train_fraction=0.5
    )
    train, test = split_rows(read_rows(shared_data / "dev_hotpotqa.jsonl"), 0, 0.5)
    assert [f for f, _ in rows[:4]] == ["dev_hotpotqa.jsonl", "train_boolq.jsonl"] * 2
    hotpot_ids = {r["id"] for f, r in rows if f == "dev_hotpotqa.jsonl"}
    assert hotpot_ids == {r["id"] for r in train} and not hotpot_ids & {r["id"] for r in test}
    assert sum(1 for f, _ in rows if f == "train_boolq.jsonl") == 1000


@pytest.mark.unit
def test_a_line_cut_short_is_skipped_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    rec = {"file": "f", "id": "1", "model": "m", "policy": "none", "f1": 1.0}
    _append(path, rec)
    with path.open("a") as fh:
        fh.write('{"file": "f", "id": "2", "mod')  # killed mid-write
    assert list(read_runs(path)) == [run_key("f", "1", "m", "none")]
    _append(path, {**rec, "id": "3"})
    assert set(read_runs(path)) == {run_key("f", "1", "m", "none"), run_key("f", "3", "m", "none")}


@pytest.mark.unit
def test_full_and_cascade_answers_are_kept_apart(tmp_path: Path) -> None:
    """A full-matrix run never takes a cascade's answer for its own (the cascade's are biased), a cascade
    may take a full run's, and both lines of one (question, model, policy) survive a reread."""
    from bench.ladder import _done

    path = tmp_path / "runs.jsonl"
    rec = {"file": "f", "id": "1", "model": "m", "policy": "none", "f1": 0.0}
    _append(path, {**rec, "mode": "cascade"})
    done = read_runs(path)
    assert _done(done, "f", "1", "m", "none", "full") is None
    assert _done(done, "f", "1", "m", "none", "cascade") is not None
    _append(path, {**rec, "mode": "full", "f1": 1.0})
    done = read_runs(path)
    assert len(done) == 2 and _done(done, "f", "1", "m", "none", "full")["f1"] == 1.0
    with pytest.raises(ValueError, match="policies must be some of"):
        collect_ladder(None, tmp_path, data=[], policies=("rerank",))  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.model
def test_collection_resumes(shared_data: Path, tmp_path: Path, base_config: dict[str, Any]) -> None:
    from services.config import load_config

    config = load_config({**base_config, "cache_dir": str(Path.home() / ".cache" / "ragyard")})
    kw: dict[str, Any] = {"data": [str(shared_data / "dev_boolq.jsonl")], "limit": 1, "max_tokens": 4}
    first = collect_ladder(config, tmp_path, policies=("none", "single"), **kw)
    assert first["answered_now"] == 2 and first["questions_complete"] == 1
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert {r["policy"] for r in runs} == {"none", "single"} and all(0 <= r["f1"] <= 1 for r in runs)
    assert collect_ladder(config, tmp_path, policies=("none", "single"), **kw)["answered_now"] == 0


@pytest.mark.unit
def test_cascade_plans_skip_what_cannot_or_need_not_run() -> None:
    from bench.ladder import planned_pairs

    models = ["small", "big"]
    one_hop = {"hops": 1, "contexts": [{"text": "p"}]}
    two_hop = {"hops": 2, "contexts": [{"text": "p"}]}
    no_passages = {"hops": 2, "contexts": []}
    policies = ("none", "single", "multi")
    assert planned_pairs(one_hop, models, policies, "cascade") == [
        ("small", "none"),
        ("big", "none"),
        ("small", "single"),
        ("big", "single"),
    ]
    assert planned_pairs(two_hop, models, policies, "cascade")[-1] == ("big", "multi")
    assert len(planned_pairs(one_hop, models, policies, "full")) == 6
    assert planned_pairs(no_passages, models, policies, "full") == [("small", "none"), ("big", "none")]


@pytest.mark.integration
@pytest.mark.model
def test_cascade_stops_at_the_first_right_answer(tmp_path: Path, base_config: dict[str, Any]) -> None:
    """Real answers by SmolLM2: a question without passages gets only ``none``; one whose runs are
    already there (a correct one first) is not asked again."""
    from services.config import load_config

    config = load_config({**base_config, "cache_dir": str(Path.home() / ".cache" / "ragyard")})
    data = tmp_path / "q.jsonl"
    rows = [
        {"id": "fan", "question": "Who wrote Hamlet?", "answers": ["Shakespeare"], "hops": 2, "contexts": []},
        {"id": "one", "question": "Is water wet?", "answers": ["yes"], "hops": 1, "contexts": []},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    out.mkdir()
    model = "smollm2-135m-instruct"
    # "one" was answered right without retrieval in an earlier session: the cascade is done with it.
    _append(
        out / "runs.jsonl", {"file": "q.jsonl", "id": "one", "model": model, "policy": "none", "em": 1.0, "f1": 1.0}
    )
    summary = collect_ladder(config, out, data=[], train_data=[str(data)], mode="cascade", max_tokens=4)
    runs = list(read_runs(out / "runs.jsonl").values())
    assert summary["answered_now"] == 1 and summary["questions_complete"] == 2
    fan = [r for r in runs if r["id"] == "fan"]
    assert [(r["model"], r["policy"], r["mode"]) for r in fan] == [(model, "none", "cascade")]
