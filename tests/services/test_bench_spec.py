from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.config import load_config
from services.evaluation.bench_spec import bench_spec


@pytest.mark.unit
def test_bench_spec_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--drafters"):
        bench_spec(load_config({}), [], tmp_path, drafters=("medusa",))
    with pytest.raises(ValueError, match="--k"):
        bench_spec(load_config({}), [], tmp_path, ks=(0,))


@pytest.mark.integration
@pytest.mark.model
def test_bench_spec_on_one_prompt(shared_data: Path, tmp_path: Path) -> None:
    table = bench_spec(
        load_config({}),
        [str(shared_data / "dev_hotpotqa.jsonl")],
        tmp_path,
        limit=1,
        calibration_limit=1,
        max_tokens=10,
        ks=(2,),
        drafters=("ngram",),
    )
    result = json.loads((tmp_path / "spec.json").read_text())
    setups = result["engines"]["torch"]["setups"]
    assert set(setups) == {"ngram K=2", "ngram adaptive"}
    for figures in setups.values():
        assert figures["identical_greedy"] == 1.0
        assert figures["speedup"] > 0 and 0 <= figures["acceptance_rate"] <= 1
    assert (tmp_path / "predictors" / "ngram.json").exists()
    assert "| torch | plain |" in table
