"""`ragyard bench engines` at its smallest: one dev prompt, a few tokens, torch and llama.cpp and the bare
llama-cpp-python loop on SmolLM2 in this process (vLLM has its own tests; peak RSS needs fresh processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_bench_engines_on_one_prompt(tmp_path: Path, base_config: dict[str, Any], shared_data: Path) -> None:
    from bench.bench_engines import bench_engines
    from services.config import load_config

    config = load_config(base_config)
    table = bench_engines(
        config,
        [str(shared_data / "dev_hotpotqa.jsonl")],
        tmp_path,
        models=["smollm2-135m-instruct"],
        engines=("torch", "llamacpp", "bare"),
        limit=1,
        max_tokens=4,
        rss=False,
    )
    result = json.loads((tmp_path / "engines.json").read_text())
    model = result["models"]["smollm2-135m-instruct"]
    assert result["prompts_per_model"] == 1 and "smollm2" in table
    assert set(model["engines"]) == {"torch", "llamacpp", "bare"}
    assert all(len(model["runs"][e]) == 1 for e in ("torch", "llamacpp", "bare"))
    for e in ("llamacpp", "bare"):
        assert 0.0 <= model["engines"][e]["greedy_agreement_with_torch"] <= 1.0
    assert set(model["ratios"]) == {
        "llamacpp_vs_torch_decode",
        "llamacpp_vs_torch_prefill",
        "llamacpp_vs_bare_decode",
        "llamacpp_vs_bare_prefill",
    }
