"""The completions API's pipeline (`/v1/completions`): a raw prompt continued by the plan's model, with no
retrieval and no chat template; planned, settled, traced and counted through the answer pipeline's service
(`services/pipeline/service.py`) like an answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from retrieval.answering import prompt_cache_record
from retrieval.generation import GenerationStats, SamplingParams, TokenLogprob
from router.plan import RouteDecision
from services.pipeline import telemetry
from services.pipeline.records import (
    AnswerRequest,
    CacheRecord,
    Completion,
    PlanRecord,
    StreamEvent,
    TokenUsage,
    new_id,
    openai_logprobs,
    rounded_timings,
)
from services.pipeline.service import RagService


async def complete(
    svc: RagService, req: AnswerRequest, prompt: str, decided: tuple[RouteDecision, SamplingParams] | None = None
) -> AsyncIterator[StreamEvent[Completion]]:
    """A raw prompt continued by the plan's model (no retrieval, no chat template), as text deltas and
    then the record. Planned and settled like an answer: the SLA controller admits it and is told how it
    ended, so a tenant's budget and limits count it."""
    started = time.perf_counter()
    decision, params = decided or await svc.decide(req)
    worker = svc.worker_for(decision.plan.model)
    first: float | None = None
    record: Completion | None = None
    parts: list[str] = []
    tokens: list[TokenLogprob] = []
    finish = "length"
    stats = GenerationStats()
    error: BaseException | None = None
    chunks = worker.stream(prompt, params)
    if req.span is not None:
        chunks = telemetry.trace_stream(chunks, req.span, decision.plan.model, params)
    try:
        async for chunk in chunks:
            if first is None:
                first = time.perf_counter() - started
            if chunk.prompt_tokens or chunk.completion_tokens:
                req.ran.prompt_tokens, req.ran.completion_tokens = chunk.prompt_tokens, chunk.completion_tokens
            if chunk.logprobs:
                tokens += chunk.logprobs
            if chunk.text or chunk.logprobs:
                parts.append(chunk.text)
                yield StreamEvent(text=chunk.text, logprobs=chunk.logprobs)
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
            if chunk.stats is not None:
                stats = chunk.stats
        req.ran.prompt_tokens, req.ran.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        timings = {
            "retrieve_s": 0.0,
            "queue_s": stats.queue_s,
            "prefill_s": stats.prefill_s,
            "decode_s": stats.decode_s,
            "ttft_s": stats.ttft_s,
            "total_s": time.perf_counter() - started,
        }
        record = Completion(
            id=new_id("cmpl"),
            text="".join(parts),
            finish_reason=finish,
            model=decision.plan.model,
            plan=PlanRecord.of(decision),
            timings=rounded_timings(timings),
            usage=TokenUsage.of(stats.prompt_tokens, stats.completion_tokens),
            cache=CacheRecord(response="bypass", **(prompt_cache_record(stats) or {})),
            speculative=stats.speculative or None,
            logprobs=openai_logprobs(tokens) if params.logprobs is not None else None,
            request_id=req.request_id or None,
        )
        svc.observe(decision, record, timings)
        await svc.finish(decision, record, started, first, req.ran, parent=req.span)
        yield StreamEvent(record=record)
    except BaseException as exc:
        error = exc
        raise
    finally:
        if record is None:  # failed, or the client went away: charged what the model ran
            await svc.finish(decision, None, started, ran=req.ran, parent=req.span)
        svc.close_span(req, record, error)
