"""A policy added as one file outside the package (tests/retrieval/policies/plugin_policy.py), registered by
"module:Class": requested, planned, budgeted and served with no router, controller or service code
naming it; and the facts the layers above read come from the registry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from retrieval.answering import run_policy
from retrieval.generation import GenerationResult, GenerationStats, SamplingParams
from retrieval.policies import registry
from retrieval.policies.base import PolicyContext, Question
from services.config import load_config
from services.errors import ConfigError
from tests.utils.factories import passage

pytestmark = pytest.mark.unit

PLUGIN = {"single_rerank": "tests.retrieval.policies.plugin_policy:SingleRerankPolicy"}
MODEL = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def _registry() -> Iterator[None]:
    """Registration is process-wide: each test starts and ends with the built-in policies only."""
    policies, loaded = dict(registry.POLICIES), dict(registry._loaded)
    yield
    registry.POLICIES.clear()
    registry.POLICIES.update(policies)
    registry._loaded.clear()
    registry._loaded.update(loaded)


def _config(**extra: Any) -> Any:
    return load_config({"models": [{"id": MODEL}], "retrieval": {"plugins": PLUGIN}, **extra})


def test_the_registry_holds_the_facts() -> None:
    assert registry.choosable_policies() == ["none", "dragin", "single", "multi"]
    assert registry.label_ladder() == [("none", "A"), ("single", "B"), ("multi", "C")]
    assert [registry.policy_rank(p) for p in ("none", "single", "dragin", "multi")] == [0, 1, 1, 2]
    settings = load_config({}).retrieval
    assert registry.get_policy("multi").max_llm_calls(settings) == settings.multi_max_steps + 1
    assert registry.get_policy("adaptive").max_llm_calls(settings) == max(
        settings.multi_max_steps + 1, settings.dragin_max_retrievals + 2
    )


def test_a_plugin_registers_from_the_config() -> None:
    assert "single_rerank" not in registry.available_policies()
    config = _config(retrieval={"plugins": PLUGIN, "default_policy": "single_rerank"})
    assert config.retrieval.default_policy == "single_rerank"
    assert "single_rerank" in registry.available_policies() and "single_rerank" in registry.choosable_policies()
    assert registry.policy_rank("single_rerank") == 1
    _config()  # the same target again is fine


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.retrieval.policies.plugin_policy:Missing", "cannot load"),
        ("tests.retrieval.nowhere:Policy", "cannot load"),
        ("tests.retrieval.policies.plugin_policy", 'not "module:Class"'),
        ("tests.retrieval.policies.plugin_policy:Misnamed", "is named 'something_else'"),
        ("tests.retrieval.policies.plugin_policy:Incomplete", "lacks rank, choosable, label_class, max_llm_calls"),
    ],
)
def test_a_bad_plugin_is_a_config_error(target: str, message: str) -> None:
    name = "incomplete" if target.endswith("Incomplete") else "single_rerank"
    with pytest.raises(ConfigError, match=message) as info:
        load_config({"models": [{"id": MODEL}], "retrieval": {"plugins": {name: target}}})
    assert f"retrieval.plugins.{name}" in info.value.message
    assert name not in registry.available_policies()


def test_a_builtin_name_cannot_be_taken() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        load_config({"retrieval": {"plugins": {"single": PLUGIN["single_rerank"]}}})


def test_the_router_plans_it() -> None:
    from router.routing import ConfigRouter

    decision = ConfigRouter(_config(router={"artifact": None, "quality_table": None})).route(
        "Which port?", policy="single_rerank"
    )
    assert decision.plan.policy == "single_rerank"
    assert "policy 'single_rerank' requested" in decision.reason


def test_the_sla_controller_budgets_it() -> None:
    from router.budgets.memory_ledger import MemoryLedger
    from router.controller import SlaController
    from router.sla import PolicyStore, parse_policy

    config = _config(sla={"enabled": True})
    store = PolicyStore(None)
    store._policy = parse_policy(
        {
            "default_tier": "batch",
            "tiers": {"batch": {"priority": 1, "latency_ms": 60000, "quality_floor": {"min_policy": "single_rerank"}}},
            "tenants": {"t": {"api_keys": ["k"], "tier": "batch", "budget": {"tokens": 100_000}}},
        }
    )
    ctl = SlaController(config, store, MemoryLedger(), quality={"single": {"A": 0.5, "B": 0.5, "C": 0.5}})
    decision = asyncio.run(
        ctl.decide(
            tenant="t",
            headers={},
            complexity=None,
            pinned_policy="single_rerank",
            pinned_model=None,
            top_k=4,
            max_tokens=32,
            cacheable=True,
            use_response_cache=True,
        )
    )
    assert decision.plan.policy == "single_rerank"
    # One model call at most (its max_llm_calls), so the reservation is one call's worst case.
    assert asyncio.run(ctl.ledger.usage("t", "day")).reserved_tokens == config.default_model.max_model_len


def test_it_runs_like_any_policy() -> None:
    registry.register_policy("single_rerank", PLUGIN["single_rerank"])
    asked: list[int] = []

    async def retrieve(query: str, k: int) -> list[Any]:
        asked.append(k)
        texts = ["bananas are yellow", "the port is 8000", "ragyard listens on port 8000", "nothing here"]
        return [passage(t, index=i) for i, t in enumerate(texts * 2)][:k]

    async def generate(messages: Any, params: SamplingParams, prefix: str = "", chunks: Any = None) -> GenerationResult:
        assert "ragyard listens on port 8000" in messages[-1].content
        return GenerationResult("8000", "stop", GenerationStats(prompt_tokens=30, completion_tokens=1))

    ctx = PolicyContext(retrieve=retrieve, generate=generate, stream=generate, top_k=2)  # type: ignore[arg-type]
    result = asyncio.run(
        run_policy(
            registry.get_policy("single_rerank"),
            Question(text="which port does ragyard listen on"),
            ctx,
            SamplingParams(max_tokens=4),
        )
    )
    assert asked == [4]  # twice top_k
    assert [p.chunk.text for p in result.passages] == ["ragyard listens on port 8000", "the port is 8000"]
    assert result.answer == "8000" and [s["step"] for s in result.steps] == ["retrieve", "rerank", "generate"]
