from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench.bench_spec import bench_spec
from services.config import load_config


@pytest.mark.unit
def test_bench_spec_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--drafters"):
        bench_spec(load_config({}), [], tmp_path, drafters=("medusa",))
    with pytest.raises(ValueError, match="--k"):
        bench_spec(load_config({}), [], tmp_path, ks=(0,))
    with pytest.raises(ValueError, match="--thresholds"):
        bench_spec(load_config({}), [], tmp_path, thresholds=(0.5, 1.5))


@pytest.mark.integration
@pytest.mark.model
def test_bench_spec_on_one_prompt(shared_data: Path, tmp_path: Path) -> None:
    """The torch drafters (the vLLM leg is the next test's)."""
    pair = {"method": "draft_model", "model": "package:smollm2-135m-instruct"}
    table = bench_spec(
        load_config({"models": [{"id": "smollm2-135m-instruct", "speculative": pair}]}),
        [str(shared_data / "dev_hotpotqa.jsonl")],
        tmp_path,
        limit=1,
        calibration_limit=1,
        max_tokens=10,
        ks=(2,),
        drafters=("ngram",),
        vllm=False,
    )
    result = json.loads((tmp_path / "spec.json").read_text())
    setups = result["engines"]["torch"]["setups"]
    assert set(setups) == {"ngram K=2", "ngram K=2 unpadded", "ngram adaptive", "ngram cost-aware"}
    assert setups["ngram cost-aware"]["setup"]["rule"] == "cost"
    assert setups["ngram K=2 unpadded"]["setup"]["padded_width"] is None
    assert len(result["engines"]["torch"]["verify_width_costs"]["padded_width"]) == 8
    plain = result["plain_decode_tokens_per_s_median"]
    for figures in setups.values():
        assert figures["identical_greedy"] == 1.0 and 0 <= figures["acceptance_rate"] <= 1
        # One prompt: the speedup is its decode rate over plain decoding's on the same prompt.
        assert figures["speedup"] == pytest.approx(figures["decode_tokens_per_s_median"] / plain, rel=0.02)
    assert (tmp_path / "predictors" / "ngram.json").exists()
    ngram = result["predictors"]["ngram"]
    assert set(ngram["threshold_speedups_on_calibration"]) == {"0.3", "0.5", "0.7", "0.9"}
    assert ngram["stop_threshold"] == max(
        (float(t) for t in ngram["threshold_speedups_on_calibration"]),
        key=lambda t: ngram["threshold_speedups_on_calibration"][str(t)],
    )
    assert setups["ngram adaptive"]["setup"]["threshold"] == ngram["stop_threshold"]
    assert "| torch | plain |" in table
    assert "vllm" not in result["engines"]
    prompts = json.loads((tmp_path / "prompts.json").read_text())
    assert len(prompts["measured"]) == 1 and len(prompts["calibration"]) == 1


@pytest.mark.integration
@pytest.mark.model
@pytest.mark.vllm
@pytest.mark.bench_vllm
def test_bench_spec_vllm_leg_on_one_prompt(engine: Any, shared_data: Path) -> None:
    """vLLM plain against vLLM with ngram and with the configured draft model (SmolLM2 drafting for itself),
    three engines one after the other, on one real RAG prompt."""
    from bench.bench_spec_vllm import bench_vllm
    from retrieval.generation import SamplingParams
    from tests.utils.factories import rag_prompts

    if importlib.util.find_spec("vllm") is None:
        # `make test-vllm` sets RAGYARD_REQUIRE_VLLM=1: there a missing vLLM fails instead of skipping.
        if os.environ.get("RAGYARD_REQUIRE_VLLM") == "1":
            pytest.fail("RAGYARD_REQUIRE_VLLM=1 but vLLM is not installed: run `make install-vllm`")
        pytest.skip("vLLM is not installed (`make install-vllm`)")
    pair = {"method": "draft_model", "model": "package:smollm2-135m-instruct"}
    config = load_config({"models": [{"id": "smollm2-135m-instruct", "speculative": pair}]})
    prompts = rag_prompts(engine, shared_data, 1)
    vllm = bench_vllm(config, prompts, SamplingParams(max_tokens=10), 4, one_at_a_time=True)
    assert set(vllm["setups"]) == {"ngram K=4", "draft_model K=4"}
    for figures in vllm["setups"].values():
        # The draft is the target itself; one prompt: its speedup is its decode rate over plain decoding's.
        assert figures["identical_greedy"] == 1.0 and 0 <= figures["acceptance_rate"] <= 1
        plain = vllm["plain_decode_tokens_per_s_median"]
        assert figures["speedup"] == pytest.approx(figures["decode_tokens_per_s_median"] / plain, rel=0.05)
    assert vllm["package"].startswith("vllm") and vllm["one_at_a_time"]


@pytest.mark.integration
@pytest.mark.model
def test_bench_spec_replays_saved_prompts_without_the_serving_stack(engine: Any, tmp_path: Path) -> None:
    """`python -m bench.bench_spec` (for a GPU host): prompts from a file, the model from a folder."""
    from bench.bench_spec import main
    from retrieval.generation import ChatMessage
    from services.workers.model_store import resolve_model_path

    prompt = engine.render_chat([ChatMessage(role="user", content="Repeat: the quick brown fox jumps over the dog.")])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"calibration": [prompt], "measured": [prompt]}))
    folder = str(resolve_model_path(None, load_config({}).cache_dir))
    out = tmp_path / "out"
    args = ["--prompts", str(prompts), "--model-path", folder, "--device", "cpu", "--out", str(out)]
    assert main([*args, "--k", "2", "--drafters", "ngram,hybrid", "--max-tokens", "8"]) == 0
    result = json.loads((out / "spec.json").read_text())
    setups = result["engines"]["torch"]["setups"]
    assert set(setups) == {
        f"{m} {s}" for m in ("ngram", "hybrid") for s in ("K=2", "K=2 unpadded", "adaptive", "cost-aware")
    }
    assert setups["hybrid K=2"]["setup"]["drafter"].startswith("hybrid(ngram(1-3), draft_model(")
    assert all(f["identical_greedy"] == 1.0 for f in setups.values())
    assert result["engines"]["torch"]["device"] == "cpu"
    with pytest.raises(SystemExit):
        main([*args, "--k", "two"])
