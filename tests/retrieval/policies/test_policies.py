from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.errors import UnknownPolicyError
from retrieval.policies.base import Question
from retrieval.policies.registry import available_policies, get_policy
from services.pipeline import AnswerRequest

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_registry_lists_and_refuses() -> None:
    assert available_policies() == ["adaptive", "dragin", "multi", "none", "single"]
    assert get_policy("single").name == "single"
    with pytest.raises(UnknownPolicyError, match="valid: adaptive, dragin, multi, none, single"):
        get_policy("nope")


@pytest.mark.parametrize("policy", ["none", "single", "multi", "dragin"])
def test_each_policy_end_to_end_on_real_questions(policy: str, shared_data: Path, local_service: Any) -> None:
    rows = [json.loads(line) for line in (shared_data / "dev_hotpotqa.jsonl").read_text().splitlines()[:2]]
    asyncio.run(local_service.corpus.ingest([d for r in rows for d in _contexts(r)]))
    for row in rows:
        rec = asyncio.run(
            local_service.answer(
                AnswerRequest(question=Question(text=row["question"], style="short"), policy=policy, max_tokens=16)
            )
        )
        assert rec.answer
        assert rec.plan.policy == policy
        steps = [s["step"] for s in rec.trace]
        retrieves = steps.count("retrieve")
        assert rec.retrieval_steps == retrieves
        if policy == "none":
            assert rec.citations == [] and rec.retrieval_steps == 0 and steps == ["generate"]
        elif policy == "multi":
            assert steps[0] == "retrieve" and steps[-1] == "generate" and "reason" in steps
            assert 1 <= retrieves <= 4 and rec.llm_calls == steps.count("reason") + 1
        elif policy == "dragin":
            assert steps[0] == "generate" and rec.trace[0]["signals"] == "entropy x attention"
            assert rec.llm_calls == steps.count("generate")
            assert retrieves == sum(1 for s in rec.trace if s["step"] == "generate" and s["trigger"])
        else:
            # The default context selects the passages' lines: a `select` step says which, when there were any.
            assert rec.retrieval_steps == 1 and steps in (["retrieve", "select", "generate"], ["retrieve", "generate"])
            titles = {c.title for c in rec.citations}
            assert titles & {c["title"] for c in row["contexts"]}
            assert all({"document_id", "title", "chunk", "score"} <= set(c.model_dump()) for c in rec.citations)
        assert set(rec.timings) >= {"retrieve_s", "prefill_s", "decode_s", "total_s"}


def _contexts(row: dict[str, Any]) -> list[Any]:
    from retrieval.documents import Document

    return [Document(title=c["title"], text=c["text"]) for c in row["contexts"]]


def test_dragin_without_attention_runs_on_entropy() -> None:
    """An engine that exposes no attention: RIND falls back to entropy and the trace says so."""
    from retrieval.answering import run_policy
    from retrieval.generation import GenerationResult, GenerationStats, SamplingParams, SignalResult
    from retrieval.policies.base import PolicyContext
    from tests.utils.factories import passage

    calls: list[str] = []

    async def retrieve(query: str, k: int) -> list[Any]:
        calls.append(query)
        return [passage("Zorblat is the capital of Quux.", title="Quux")]

    async def signals(messages: Any, params: SamplingParams, prefix: str = "") -> SignalResult:
        has_passages = "Zorblat" in messages[-1].content
        toks = [" The", " capital", " is", " Zorblat"] if has_passages else [" The", " capital", " is", " Blorp"]
        ent = [0.1, 0.2, 0.1, 0.3 if has_passages else 5.0]
        return SignalResult(
            "".join(toks),
            "stop",
            [1, 2, 3, 4],
            ["<q>", *toks],
            1,
            ent,
            None,
            GenerationStats(prompt_tokens=10, completion_tokens=4),
        )

    async def unused(*args: Any, **kw: Any) -> GenerationResult:
        raise AssertionError("dragin drafts with signals only")

    ctx = PolicyContext(
        retrieve=retrieve,
        generate=unused,
        stream=unused,  # type: ignore[arg-type]
        generate_with_signals=signals,
        params=SamplingParams(max_tokens=8),
    )
    result = asyncio.run(
        run_policy(
            get_policy("dragin"), Question(text="What is the capital of Quux?"), ctx, SamplingParams(max_tokens=8)
        )
    )
    assert result.answer == "The capital is Zorblat"
    assert result.retrieval_steps == 1 and result.llm_calls == 2 and result.prompt_tokens == 20
    assert all(s["signals"] == "entropy only (no attention)" for s in result.steps if s["step"] == "generate")
    assert calls and "capital" in calls[0]


def test_adaptive_runs_the_classified_policy(shared_data: Path, local_service: Any, embedder: Any) -> None:
    """A classifier fitted on real question embeddings (multi-hop → C, BoolQ → B, chit-chat → A)
    routes a held-out multi-hop question to `multi` through the whole service."""
    from router.classifier import ComplexityClassifier
    from router.features import feature_vector
    from router.routing import ConfigRouter
    from router.training import fit
    from services.deployments.router import RouterService
    from services.pipeline import RagService
    from services.pipeline.clients import local_router

    hot = [json.loads(line)["question"] for line in (shared_data / "dev_hotpotqa.jsonl").read_text().splitlines()]
    boolq = [json.loads(line)["question"] for line in (shared_data / "dev_boolq.jsonl").read_text().splitlines()]
    chat = [
        "Hello!",
        "Thanks a lot.",
        "What is two plus two?",
        "Say hi.",
        "How are you today?",
        "Tell me a joke.",
        "What is 3 times 3?",
        "Good morning!",
        "Spell cat.",
        "Count to three.",
    ]
    qs = hot[1:21] + boolq[:20] + chat
    labels = ["C"] * 20 + ["B"] * 20 + ["A"] * 10
    x = np.stack([feature_vector(v, q) for v, q in zip(embedder.encode(qs), qs, strict=True)])
    clf: ComplexityClassifier = fit(x, labels)[0]
    # Without a quality table `adaptive` maps the class to its policy (with one, the table decides: test_quality).
    config = local_service.config.model_copy(
        update={"router": local_service.config.router.model_copy(update={"quality_table": None})}
    )
    router_service = RouterService(config)
    router_service.router = ConfigRouter(config, classifier=clf)
    service = RagService(
        local_service.config,
        local_service.retriever,
        local_service.workers,
        router=local_router(router_service),
        cache=None,
    )
    rec = asyncio.run(
        service.answer(AnswerRequest(question=Question(text=hot[0], style="short"), policy="adaptive", max_tokens=16))
    )
    complexity = rec.plan.complexity
    assert complexity is not None and complexity.cls == "C" and complexity.policy == "multi"
    assert rec.trace[0]["step"] == "classify" and rec.trace[0]["probabilities"]["C"] > 0.5
    assert rec.retrieval_steps >= 1 and rec.answer
    rec = asyncio.run(
        service.answer(AnswerRequest(question=Question(text="Good evening!"), policy="adaptive", max_tokens=8))
    )
    assert rec.plan.complexity is not None and rec.plan.complexity.policy == "none" and rec.retrieval_steps == 0
