from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from retrieval.policies.base import Question
from services.config import load_config
from services.pipeline import AnswerRequest, RagService, build_cache

pytestmark = [pytest.mark.integration, pytest.mark.model, pytest.mark.redis]


def test_redis_response_cache_is_shared_between_gateways(local_service: Any, redis_url: str) -> None:
    """Two RagService instances (as two gateway replicas would be) share answers through Redis."""
    config = load_config({"models": [{"id": "smollm2-135m-instruct"}], "cache": {"response_cache_url": redis_url}})
    first = RagService(config, local_service.retriever, local_service.workers, cache=build_cache(config))
    second = RagService(config, local_service.retriever, local_service.workers, cache=build_cache(config))
    question = f"What port does Ragyard listen on? ({uuid.uuid4().hex[:6]})"
    req = AnswerRequest(question=Question(text=question), max_tokens=8)
    a = asyncio.run(first.answer(req))
    b = asyncio.run(second.answer(req))
    assert a.cache.model_dump() == {"response": "miss"} and b.cache.model_dump() == {"response": "hit"}
    assert a.answer == b.answer and a.citations == b.citations
