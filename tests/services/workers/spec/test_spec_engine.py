"""Speculative decoding on the real model: every drafter gives the target's greedy output exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from retrieval.generation import SamplingParams
from services.config import SpeculativeConfig
from services.workers.spec.base import Draft
from services.workers.spec.decode import SpecSetup, build_setup
from services.workers.spec.draft_model import rollback
from tests.utils.factories import rag_prompts

pytestmark = [pytest.mark.integration, pytest.mark.model]


@pytest.fixture(scope="module")
def prompts(engine: Any, shared_data: Path) -> list[str]:
    return rag_prompts(engine, shared_data, 1)


def _setup(engine: Any, **spec: Any) -> SpecSetup:
    return build_setup(SpeculativeConfig.model_validate(spec), engine.model, engine.device, "")


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "ngram", "num_speculative_tokens": 4},
        {"method": "ngram", "num_speculative_tokens": 6, "adaptive": True, "stop_threshold": 0.6},
        {"method": "self_draft", "self_draft_layers": 20, "num_speculative_tokens": 3, "adaptive": True},
    ],
    ids=["ngram", "ngram-adaptive", "self-draft-adaptive"],
)
def test_greedy_output_is_identical_with_every_drafter(engine: Any, prompts: list[str], spec: dict[str, Any]) -> None:
    setup = _setup(engine, **spec)
    params = SamplingParams(max_tokens=20)
    drafted = accepted = 0
    for prompt in prompts:
        plain = engine.generate_sync(prompt, params, spec=False)
        fast = engine.generate_sync(prompt, params, spec=setup)
        assert fast.text == plain.text and fast.finish_reason == plain.finish_reason
        assert fast.stats.completion_tokens == plain.stats.completion_tokens
        figures = fast.stats.speculative
        assert figures is not None and figures["accepted"] <= figures["drafted"]
        drafted += figures["drafted"]
        accepted += figures["accepted"]
    assert drafted > 0 and accepted > 0  # the identical output came through accepted drafts too


def test_draft_model_drafter_with_the_target_itself_accepts_everything(engine: Any, prompts: list[str]) -> None:
    # The packaged model drafting for itself: the same greedy choices, so every draft is accepted.
    setup = build_setup(SpeculativeConfig(method="draft_model"), engine.model, engine.device, engine_cache_dir())
    out = engine.generate_sync(prompts[0], SamplingParams(max_tokens=16), spec=setup)
    assert out.text == engine.generate_sync(prompts[0], SamplingParams(max_tokens=16), spec=False).text
    assert out.stats.speculative["acceptance_rate"] == 1.0


def engine_cache_dir() -> str:
    from services.config import load_config

    return load_config({}).cache_dir


class _WrongDrafter:
    """Always proposes tokens the target will not pick: every round is a forced rejection."""

    name = "wrong"
    label = "wrong"
    feature_names = ("x",)

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def prior_acceptance(self, features: list[float]) -> float:
        return 0.5

    def reset(self) -> None:
        pass

    def propose(self, context: list[int], max_k: int, params: Any, gen: Any, keep_going: Any) -> Draft:
        import torch

        with torch.inference_mode():
            logits = self.engine.model(input_ids=torch.tensor([context])).logits[0, -1]
        wrong = int(torch.argsort(logits, descending=True)[1])  # the runner-up, never the argmax
        return Draft(tokens=[wrong] * max_k, q=[None] * max_k, features=[[0.0]] * max_k)


def test_forced_rejections_roll_the_kv_cache_back(engine: Any, prompts: list[str]) -> None:
    setup = SpecSetup("wrong", lambda: _WrongDrafter(engine), max_k=3)  # type: ignore[arg-type,return-value]
    params = SamplingParams(max_tokens=8)
    out = engine.generate_sync(prompts[1], params, spec=setup)
    assert out.text == engine.generate_sync(prompts[1], params, spec=False).text
    figures = out.stats.speculative
    assert figures["accepted"] == 0 and figures["drafted"] > 0 and figures["rounds"] >= 7


def test_rollback_matches_a_cache_built_without_the_rejected_tokens(engine: Any) -> None:
    import torch
    from transformers import DynamicCache

    ids = engine.encode("The capital of France is Paris, and the capital of Italy is Rome.")
    with torch.inference_mode():
        cache = DynamicCache()
        engine.model(input_ids=torch.tensor([ids[:8]]), past_key_values=cache, use_cache=True)
        engine.model(input_ids=torch.tensor([[11, 12, 13]]), past_key_values=cache, use_cache=True)  # rejected
        rollback(cache, 8)
        assert cache.get_seq_length() == 8
        rolled = engine.model(input_ids=torch.tensor([ids[8:]]), past_key_values=cache, use_cache=True).logits
        fresh = engine.model(input_ids=torch.tensor([ids])).logits[:, 8:]
    assert torch.allclose(rolled, fresh, atol=1e-4)


def test_sampling_with_speculation_is_seeded_and_well_formed(engine: Any, prompts: list[str]) -> None:
    setup = _setup(engine, method="ngram", num_speculative_tokens=4)
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=7)
    a = engine.generate_sync(prompts[0], params, spec=setup)
    b = engine.generate_sync(prompts[0], params, spec=setup)
    assert a.text == b.text and a.stats.completion_tokens <= 16


def test_self_draft_layer_count_is_checked(engine: Any) -> None:
    with pytest.raises(ValueError, match="between 1 and 29"):
        _setup(engine, method="self_draft", self_draft_layers=30)


def test_a_configured_draft_pair_runs_on_every_request_and_is_reported(engine: Any, prompts: list[str]) -> None:
    import asyncio

    from services.config import ModelConfig
    from services.deployments.worker import Worker
    from services.workers.engines.torch_engine import TorchEngine

    model = ModelConfig(speculative=SpeculativeConfig(method="ngram", num_speculative_tokens=3))
    spec_engine = TorchEngine(model, cache_dir=engine_cache_dir())
    worker = Worker({"models": [model.model_dump()]}, engine=spec_engine)
    assert worker.ready()["speculative"]["drafter"] == "ngram(1-3)"
    params = SamplingParams(max_tokens=12)
    result = asyncio.run(spec_engine.generate(prompts[0], params))
    assert result.text == engine.generate_sync(prompts[0], params, spec=False).text
    assert result.stats.speculative["k"] == 3 and result.stats.speculative["rounds"] > 0
    assert "speculative" in result.stats.as_dict()
    assert "speculative" not in engine.generate_sync(prompts[0], params).stats.as_dict()
    # A plan with speculation off (the SLA controller's switch) decodes plainly on the same worker.
    plain = asyncio.run(spec_engine.generate(prompts[0], params.model_copy(update={"speculative": False})))
    assert plain.text == result.text and plain.stats.speculative is None
