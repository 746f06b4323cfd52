from __future__ import annotations

import importlib.util
import json
import os
import statistics
from pathlib import Path

import pytest

from bench.bench_kvcache import bench_kvcache, zipf_table
from services.config import load_config


@pytest.mark.unit
def test_zipf_replay_compares_the_policies_on_the_same_stream() -> None:
    # Chunks of mixed sizes whose recompute cost is not proportional to size.
    entries = [(1000 + 37 * (i % 11) * 100, 0.01 + 0.2 * ((i * 7) % 5)) for i in range(200)]
    rows = zipf_table(entries, requests=5000, exponents=(1.0,), capacities=(0.1, 1.0))
    assert [r["capacity_share"] for r in rows] == [0.1, 1.0]
    small, everything = rows
    for policy in ("lru", "craft"):
        assert 0 < small[policy]["hit_rate"] < everything[policy]["hit_rate"] < 1
        # With room for every chunk only first requests miss, whatever the policy.
        assert everything[policy]["hit_rate"] == everything["lru"]["hit_rate"]
    # Cost-aware eviction saves more recompute time than LRU when memory is short.
    assert small["craft"]["compute_saved"] > small["lru"]["compute_saved"]


@pytest.mark.integration
@pytest.mark.model
@pytest.mark.redis
def test_bench_kvcache_on_two_prompts(shared_data: Path, tmp_path: Path, redis_url: str) -> None:
    table = bench_kvcache(
        load_config({}),
        [str(shared_data / "dev_hotpotqa.jsonl")],
        tmp_path,
        limit=2,
        max_tokens=8,
        redis_url=redis_url,
        zipf_requests=500,
        vllm_prompts=0,  # the vLLM leg is its own test below
        sweep=(0.5,),
    )
    result = json.loads((tmp_path / "kvcache.json").read_text())
    assert result["prompts"] == 2 and set(result["ttft_s_median"]) == {"full", "prefix", "blend", "blend_redis"}
    # Each speedup is the median over prompts of full prefill's TTFT over that mode's, on the same prompt.
    per_prompt = result["ttft_s_per_prompt"]
    assert len(per_prompt) == 2
    for key, mode in (
        ("ttft_speedup", "blend"),
        ("ttft_speedup_prefix", "prefix"),
        ("ttft_speedup_redis", "blend_redis"),
    ):
        ratios = [p["full"] / p[mode] for p in per_prompt]
        assert result[key] == pytest.approx(statistics.median(ratios), rel=1e-3, abs=1e-4)
    # The default ladder's engine (llama.cpp) recomputes the first 5% of each chunk, rounded up.
    assert result["chunk_cache"]["engine"] == "llamacpp" and result["chunk_cache"]["recompute_fraction"] == 0.05
    assert 0.03 < result["recompute_fraction"] < 0.15
    assert result["hit_rates"]["blend"]["memory"] == 1.0
    assert result["hit_rates"]["blend_redis"]["redis"] == 1.0
    assert result["hit_rates"]["blend_redis"]["bytes_read_per_prompt"] > 0
    for key in ("f1_full", "f1_reuse", "f1_prefix", "first_token_agreement"):
        assert 0.0 <= result[key] <= 1.0
    assert result["f1_delta_points"] == pytest.approx(100 * (result["f1_reuse"] - result["f1_full"]), abs=0.02)
    assert result["warm"]["entries"] >= 6  # a prefix and the chunks of two prompts
    assert {"lru", "craft"} <= set(result["eviction_zipf"][0])
    assert "| chunk-KV reuse (Redis) |" in table
    half = result["fraction_sweep"]["0.5"]
    assert 0.45 < half["recompute_fraction"] < 0.6
    # A sweep row is measured like the main row: its F1 delta against full prefill's F1, its agreement a share.
    assert half["f1_delta_points"] == pytest.approx(100 * (half["f1"] - result["f1_full"]), abs=0.02)
    assert 0.0 <= half["first_token_agreement"] <= 1.0
    assert "| recompute fraction |" in table
    assert (tmp_path / "kvcache.md").read_text().strip() == table
    assert "vllm_prefix_cache" not in result
    # Every prompt's answer in every mode is kept, and the means come from them.
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["file"] == "dev_hotpotqa.jsonl" and r["answers"] for r in rows)
    assert all(set(r["modes"]) == {"full", "prefix", "blend", "blend_redis", "blend@0.5"} for r in rows)
    assert statistics.fmean(r["modes"]["blend"]["f1"] for r in rows) == pytest.approx(result["f1_reuse"], abs=1e-4)
    assert all(isinstance(r["modes"]["full"]["answer"], str) for r in rows)


@pytest.mark.integration
@pytest.mark.model
@pytest.mark.vllm
@pytest.mark.bench_vllm
def test_bench_kvcache_vllm_leg_canonical_order_hits_the_prefix_cache(shared_data: Path) -> None:
    """vLLM's prefix cache with the same chunk set in another order: document order shares the whole prefix."""
    from bench.bench_kvcache import bench_vllm_prefix
    from retrieval.documents import Chunk, Passage
    from retrieval.generation import SamplingParams

    if importlib.util.find_spec("vllm") is None:
        # `make test-vllm` sets RAGYARD_REQUIRE_VLLM=1: there a missing vLLM fails instead of skipping.
        if os.environ.get("RAGYARD_REQUIRE_VLLM") == "1":
            pytest.fail("RAGYARD_REQUIRE_VLLM=1 but vLLM is not installed: run `make install-vllm`")
        pytest.skip("vLLM is not installed (`make install-vllm`)")
    config = load_config({})
    row = json.loads((shared_data / "dev_hotpotqa.jsonl").read_text().splitlines()[0])
    passages = [  # the row's own gold and distractor paragraphs, as retrieval would hand them over
        Passage(Chunk(n, f"d{n}", c["title"], c["text"][:400], 0, 0), 1.0 - n / 10)
        for n, c in enumerate(row["contexts"][:4])
    ]
    prompts = [{"row": row, "passages": passages}]
    vp = bench_vllm_prefix(config, prompts, SamplingParams(max_tokens=4))
    assert vp["prompts"] == 1
    assert vp["canonical"]["second_question_hit_rate"] > vp["relevance"]["second_question_hit_rate"]
