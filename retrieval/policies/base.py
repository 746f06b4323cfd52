"""The retrieval-policy interface and what a policy returns."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from retrieval.documents import Passage
from retrieval.prompts import AnswerStyle, build_messages, fit_passages
from services.workers.engine import ChatMessage, GenerationChunk, GenerationResult, SamplingParams


@dataclass
class PolicyContext:
    """What a policy may call. The library path passes local objects, the Serve path handles."""

    retrieve: Callable[[str, int], Awaitable[list[Passage]]]
    generate: Callable[[list[ChatMessage], SamplingParams], Awaitable[GenerationResult]]
    stream: Callable[[list[ChatMessage], SamplingParams], AsyncIterator[GenerationChunk]]
    top_k: int = 4
    max_context_tokens: int = 1200


@dataclass
class Question:
    text: str
    history: list[ChatMessage] = field(default_factory=list)
    system: str | None = None
    style: AnswerStyle = "chat"


@dataclass
class Prepared:
    """The final generation a policy asks for, and how it got there."""

    messages: list[ChatMessage]
    passages: list[Passage]
    steps: list[dict[str, Any]]
    retrieval_steps: int
    retrieve_s: float
    llm_calls_before: int = 0
    prompt_tokens_before: int = 0
    completion_tokens_before: int = 0


@dataclass
class PolicyResult:
    answer: str
    finish_reason: str
    passages: list[Passage]
    steps: list[dict[str, Any]]
    retrieval_steps: int
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float]


class RetrievalPolicy(Protocol):
    name: str

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        """Do the retrieval (and any intermediate reasoning) and build the final prompt."""


async def retrieve_step(query: str, ctx: PolicyContext, steps: list[dict[str, Any]]) -> tuple[list[Passage], float]:
    start = time.perf_counter()
    passages = await ctx.retrieve(query, ctx.top_k)
    spent = time.perf_counter() - start
    steps.append(
        {
            "step": "retrieve",
            "query": query,
            "top_k": ctx.top_k,
            "hits": [
                {"document_id": p.chunk.doc_id, "chunk": p.chunk.chunk_index, "score": round(p.score, 4)}
                for p in passages
            ],
            "seconds": round(spent, 4),
        }
    )
    return passages, spent


def final_messages(question: Question, passages: list[Passage] | None, ctx: PolicyContext) -> list[ChatMessage]:
    kept = None if passages is None else fit_passages(passages, ctx.max_context_tokens)
    return build_messages(question.text, kept, style=question.style, history=question.history, system=question.system)


async def run_policy(
    policy: RetrievalPolicy, question: Question, ctx: PolicyContext, params: SamplingParams
) -> PolicyResult:
    """Prepare, then generate the final answer in one piece."""
    started = time.perf_counter()
    prepared = await policy.prepare(question, ctx)
    result = await ctx.generate(prepared.messages, params)
    prepared.steps.append(
        {"step": "generate", "completion_tokens": result.stats.completion_tokens, "finish_reason": result.finish_reason}
    )
    s = result.stats
    return PolicyResult(
        answer=result.text.strip(),
        finish_reason=result.finish_reason,
        passages=prepared.passages,
        steps=prepared.steps,
        retrieval_steps=prepared.retrieval_steps,
        llm_calls=prepared.llm_calls_before + 1,
        prompt_tokens=prepared.prompt_tokens_before + s.prompt_tokens,
        completion_tokens=prepared.completion_tokens_before + s.completion_tokens,
        timings={
            "retrieve_s": prepared.retrieve_s,
            "queue_s": s.queue_s,
            "prefill_s": s.prefill_s,
            "decode_s": s.decode_s,
            "ttft_s": s.ttft_s,
            "total_s": time.perf_counter() - started,
        },
    )
