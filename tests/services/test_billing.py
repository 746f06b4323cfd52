"""Exact billing through the answer pipeline, on the scripted engine with the hashing embedder and the real router:
a tenant is charged what the model ran for it when the answer is delivered, when the engine fails part
way, when the client leaves mid-stream, and for a cached answer at the policy's cache charge."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieval.policies.base import Question
from router.plan import SlaContext
from services.pipeline import AnswerRequest, RagService, build_cache
from tests.fakes import EngineFailure, ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

MODEL = "smollm2-135m-instruct"
ANSWER = "one two three four five six seven eight"


def _service(hashing_embedder: Any, tmp: Path, cache_charge: float) -> tuple[RagService, ScriptedEngine, Any]:
    policy = tmp / f"sla-{cache_charge}.yaml"
    policy.write_text(
        "default_tier: standard\ntiers: {standard: {priority: 1, latency_ms: 600000}}\n"
        "tenants: {acme: {api_keys: [k-acme], tier: standard, budget: {tokens: 1000000}}}\n"
        f"cache_charge: {cache_charge}\n",
        encoding="utf-8",
    )
    config = scripted_config(
        tmp / f"index-{cache_charge}",
        cache={"response_cache_url": "memory://"},
        sla={"enabled": True, "policy_path": str(policy), "budget_url": "memory://"},
    )
    engine = ScriptedEngine(ANSWER)
    svc: RagService = scripted_service(config, hashing_embedder, engine, cache=build_cache(config))
    controller = svc.router.target.controller  # type: ignore[attr-defined]
    return svc, engine, controller


def _req(text: str = "Count to eight?") -> AnswerRequest:
    return AnswerRequest(question=Question(text=text), policy="none", max_tokens=16, sla=SlaContext(tenant="acme"))


def _spent(controller: Any) -> int:
    usage = asyncio.run(controller.ledger.usage("acme", "day"))
    assert usage.reserved_tokens == 0  # nothing left held
    return int(usage.spent_tokens)


@pytest.fixture()
def env(hashing_embedder: Any, tmp_path: Path) -> Iterator[tuple[RagService, ScriptedEngine, Any]]:
    yield _service(hashing_embedder, tmp_path, 1.0)


def test_a_delivered_answer_and_its_cached_copy_are_charged(env: tuple[RagService, ScriptedEngine, Any]) -> None:
    svc, engine, controller = env
    record = asyncio.run(svc.answer(_req()))
    used = record.usage.total_tokens
    assert used > 8 and _spent(controller) == used
    again = asyncio.run(svc.answer(_req()))
    assert again.cache.response == "hit"
    assert _spent(controller) == 2 * used  # cache_charge 1.0: the original tokens


def test_a_cached_answer_at_a_lower_cache_charge(hashing_embedder: Any, tmp_path: Path) -> None:
    svc, _, controller = _service(hashing_embedder, tmp_path, 0.25)
    used = asyncio.run(svc.answer(_req())).usage
    asyncio.run(svc.answer(_req()))
    quarter = -(-used.prompt_tokens // 4) + -(-used.completion_tokens // 4)  # each rounded up
    assert _spent(controller) == used.total_tokens + quarter


def test_a_failure_part_way_is_charged_what_ran(env: tuple[RagService, ScriptedEngine, Any]) -> None:
    svc, engine, controller = env
    whole = asyncio.run(svc.answer(_req("A first question?"))).usage
    before = _spent(controller)
    engine.fail_after = 3
    try:

        async def consume() -> None:
            async for _ in svc.stream(_req("A second question?")):
                pass

        with pytest.raises(EngineFailure):
            asyncio.run(consume())
    finally:
        engine.fail_after = None
    charged = _spent(controller) - before
    # the prompt (about the length of the first question's) and the 3 tokens streamed before the failure
    assert 3 < charged < whole.prompt_tokens + 4
    assert charged == engine.count_tokens(engine.prompts[-1]) + 3


def test_a_policy_that_fails_while_preparing_is_charged_its_earlier_calls(
    hashing_embedder: Any, tmp_path: Path
) -> None:
    """`multi` reasons step by step before its answer: when its second reasoning call fails, the first call's
    tokens are charged all the same (they used to count only once preparing finished)."""
    calls = 0

    def reply(prompt: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise EngineFailure("scripted failure on the second reasoning call")
        return "The first clue points north."

    svc, engine, controller = _service(hashing_embedder, tmp_path, 1.0)
    engine.reply = reply
    req = AnswerRequest(
        question=Question(text="Where does the trail lead?"),
        policy="multi",
        max_tokens=16,
        sla=SlaContext(tenant="acme"),
    )
    with pytest.raises(EngineFailure):
        asyncio.run(svc.answer(req))
    first = engine.count_tokens(engine.prompts[0]) + len("The first clue points north.".split())
    assert calls == 2 and _spent(controller) == first


def test_a_client_that_leaves_mid_stream_is_charged_what_ran(env: tuple[RagService, ScriptedEngine, Any]) -> None:
    svc, engine, controller = env
    before = _spent(controller)

    async def read_three_then_leave() -> int:
        events = svc.stream(_req("Leaving early?"))
        seen = 0
        async for ev in events:
            if ev.text:
                seen += 1
            if seen == 3:
                break
        await events.aclose()  # what the gateway does when the client disconnects
        return seen

    assert asyncio.run(read_three_then_leave()) == 3
    charged = _spent(controller) - before
    assert charged == engine.count_tokens(engine.prompts[-1]) + 3
