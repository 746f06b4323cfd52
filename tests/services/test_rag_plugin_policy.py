"""The plug-in policy (tests/retrieval/policies/plugin_policy.py) served by the answer pipeline with the real
model: asked for by name, it runs, traces its rerank step and cites what it kept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from retrieval.policies import registry
from retrieval.policies.base import Question
from services.pipeline import AnswerRequest

pytestmark = [pytest.mark.integration, pytest.mark.model]


@pytest.fixture
def plugin() -> Iterator[None]:
    policies, loaded = dict(registry.POLICIES), dict(registry._loaded)
    registry.register_policy("single_rerank", "tests.retrieval.policies.plugin_policy:SingleRerankPolicy")
    yield
    registry.POLICIES.clear()
    registry.POLICIES.update(policies)
    registry._loaded.clear()
    registry._loaded.update(loaded)


def test_the_pipeline_serves_a_plugin_policy(local_service: Any, plugin: None) -> None:
    req = AnswerRequest(
        question=Question(text="Which port does make run listen on?"), policy="single_rerank", max_tokens=8
    )
    rec = asyncio.run(local_service.answer(req))
    assert rec.plan.policy == "single_rerank"
    steps = [s["step"] for s in rec.trace]
    assert steps[:2] == ["retrieve", "rerank"]
    # The plug-in's own keys reach the record as it wrote them.
    assert isinstance(rec.trace[1]["kept"], list) and len(rec.trace[1]["kept"]) == len(rec.citations)
    assert rec.trace[0]["top_k"] == 2 * rec.plan.top_k
    assert 0 < len(rec.citations) <= rec.plan.top_k
