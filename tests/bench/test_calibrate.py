from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.calibrate import calibrate_dragin, recommend


def _m(f1: float, steps: float) -> dict[str, Any]:
    return {"f1": f1, "retrieval_steps_mean": steps}


@pytest.mark.unit
def test_recommend_takes_best_f1_among_thresholds_retrieving_less_than_multi() -> None:
    multi = _m(0.30, 2.0)
    # 0.1 has the best F1 but retrieves as often as multi: not eligible.
    cands = {0.1: _m(0.40, 2.0), 0.2: _m(0.28, 1.5), 0.4: _m(0.28, 0.5), 0.8: _m(0.10, 0.0)}
    assert recommend(multi, cands) == 0.4  # ties on F1 go to fewer retrievals
    assert recommend(multi, {0.1: _m(0.5, 3.0)}) is None


@pytest.mark.unit
def test_calibrate_rejects_bad_thresholds(tmp_path: Path) -> None:
    from services.config import load_config

    with pytest.raises(ValueError, match="positive"):
        calibrate_dragin(load_config({}), [], tmp_path, [0.2, -1.0])


@pytest.mark.integration
@pytest.mark.model
def test_calibrate_dragin_on_one_training_question(shared_data: Path, tmp_path: Path) -> None:
    from services.config import load_config

    table = calibrate_dragin(
        load_config({}), [str(shared_data / "dev_hotpotqa.jsonl")], tmp_path, [0.01, 50.0], limit=1, max_tokens=12
    )
    result = json.loads((tmp_path / "dragin.json").read_text())
    assert result["split"]["half"] == "train" and result["questions"] == 1
    assert set(result["dragin"]) == {"0.01", "50"}
    # A threshold no token can pass never retrieves; one every content token passes always does.
    assert result["dragin"]["50"]["retrieval_steps_mean"] == 0
    assert result["dragin"]["0.01"]["retrieval_steps_mean"] >= 1
    assert "recommended threshold" in table


@pytest.mark.unit
def test_the_cascade_threshold_escalates_the_target_share() -> None:
    from bench.calibrate_cascade import threshold_for

    scores = [0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.97, 0.99]
    t = threshold_for(scores, 0.3)
    assert sum(s < t for s in scores) == 3 and t == 0.3
    assert sum(s < threshold_for(scores, 0.1) for s in scores) == 2  # the hard failures (0) always escalate
    assert threshold_for(scores, 0.99) == 1.0
    with pytest.raises(ValueError):
        threshold_for([], 0.3)


@pytest.mark.integration
@pytest.mark.model
def test_calibrate_cascade_on_two_docs_questions(tmp_path: Path, base_config: dict[str, Any]) -> None:
    from bench.calibrate_cascade import calibrate_cascade
    from services.config import load_config

    config = load_config({**base_config, "cache_dir": str(Path.home() / ".cache" / "ragyard")})
    table = calibrate_cascade(config, tmp_path, escalate_share=0.5, limit=2, max_tokens=16)
    result = json.loads((tmp_path / "cascade.json").read_text())
    assert result["questions"] == 2 and 0.5 <= result["escalate_share"] <= 1.0
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert all(0.0 <= a["confidence"] <= 1.0 for a in answers)
    assert "router.cascade.min_confidence" in table
