"""The answer pipeline every policy runs in: make a follow-up standalone, let the policy prepare (retrieve,
reason, build the final prompt), then generate the final answer, streamed or in one piece; with a confidence
cascade, the plan's model answers first and the next one answers again when it is unsure. It counts the tokens
run as it goes (a request that fails or is left is charged what ran) and returns what the record is made of.

The policies themselves (`retrieval/policies/`) only prepare: this module is the same for all of them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from retrieval import followups, grounding
from retrieval.config import RetrievalConfig
from retrieval.errors import OutputFormatError
from retrieval.generation import (
    GenerationResult,
    GenerationStats,
    SamplingParams,
    SignalResult,
    TokenLogprob,
)
from retrieval.policies.base import PolicyContext, PolicyResult, Prepared, Question, RetrievalPolicy, Step
from retrieval.prompts import prompt_chunks


@dataclass
class Ran:
    """The tokens the model has run for one answer so far, kept up to date by `answer_events` whatever
    happens next: a request that fails or whose client leaves is charged these. Each call a policy makes
    while preparing counts as it returns (a call that itself fails part way is not known to have run)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of those, what the confidence cascade's next model ran (billed at its price), and which model that was.
    escalated_to: str | None = None
    escalation_prompt_tokens: int = 0
    escalation_completion_tokens: int = 0


def _counting(ctx: PolicyContext, ran: Ran) -> PolicyContext:
    """The context a policy prepares with: each model call it makes adds its tokens to ``ran`` as it
    returns, so a policy that fails after some calls is still charged them."""

    def add(stats: GenerationStats) -> None:
        ran.prompt_tokens += stats.prompt_tokens
        ran.completion_tokens += stats.completion_tokens

    async def generate(*args: Any, **kwargs: Any) -> GenerationResult:
        result = await ctx.generate(*args, **kwargs)
        add(result.stats)
        return result

    signals = ctx.generate_with_signals
    counted_signals = None
    if signals is not None:

        async def counted_signals(*args: Any, **kwargs: Any) -> SignalResult:
            assert signals is not None
            result = await signals(*args, **kwargs)
            add(result.stats)
            return result

    return replace(ctx, generate=generate, generate_with_signals=counted_signals)


@dataclass
class Standalone:
    """A follow-up made standalone: the query retrieval searches, its trace step, what it took."""

    query: str
    step: Step
    seconds: float
    stats: GenerationStats | None = None  # the rewrite call's, in ``model`` mode


async def standalone_question(policy: RetrievalPolicy, question: Question, ctx: PolicyContext) -> Standalone | None:
    """The question as retrieval should search it, when it follows up the conversation (None: as it is, or
    the policy does not retrieve, or ``retrieval.followup`` is off)."""
    mode = (ctx.settings or RetrievalConfig()).followup
    if mode == "off" or policy.rank == 0 or question.query is not None:
        return None
    started = time.perf_counter()
    stats = None
    query = followups.with_history(question.text, question.history)
    if mode == "model" and followups.last_user_turn(question.history) is not None:
        asked = ctx.params or SamplingParams()
        params = SamplingParams(
            max_tokens=followups.REWRITE_TOKENS,
            stop=("\n",),
            priority=asked.priority,
            request_id=asked.request_id,
            chunk_cache=False,
        )
        result = await ctx.generate(followups.rewrite_messages(question.text, question.history), params)
        stats = result.stats
        query = followups.clean_rewrite(result.text, question.text) or query
    if query is None:
        return None
    seconds = time.perf_counter() - started
    step: Step = {"step": "followup", "method": mode, "query": query, "seconds": round(seconds, 4)}
    if stats is not None:
        step["completion_tokens"] = stats.completion_tokens
    return Standalone(query, step, seconds, stats)


async def _first_answer(
    question: Question, prepared: Prepared, ctx: PolicyContext, params: SamplingParams, args: tuple[Any, ...]
) -> tuple[GenerationResult, bool]:
    """The cascade's first step: the plan's model answers in one piece, with its tokens' log-probabilities;
    whether its answer is unsure enough to ask the next model (`retrieval.grounding.confidence`). Its call and
    tokens join the figures of the steps before the final answer, and the trace gets a ``cascade`` step."""
    assert ctx.escalation is not None
    messages, _, prefix, chunks = args
    first = await ctx.generate(messages, params.model_copy(update={"logprobs": 0}), prefix, chunks)
    conf = grounding.confidence(
        question.text,
        prefix + first.text,
        [p.chunk.text for p in prepared.passages],
        [t.logprob for t in first.logprobs or []],
    )
    escalate = conf.score < ctx.escalation.min_confidence
    prepared.llm_calls_before += 1
    prepared.prompt_tokens_before += first.stats.prompt_tokens
    prepared.completion_tokens_before += first.stats.completion_tokens
    prepared.steps.append(
        {"step": "generate", "completion_tokens": first.stats.completion_tokens, "finish_reason": first.finish_reason}
    )
    step: Step = {
        "step": "cascade",
        "answer": (prefix + first.text).strip()[:300],
        "confidence": conf.score,
        "token_probability": conf.token_probability,
        "escalated": escalate,
        "reasons": conf.reasons,
    }
    if escalate:
        step["escalated_to"] = ctx.escalation.model
    prepared.steps.append(step)
    return first, escalate


@dataclass
class AnswerEvent:
    """One event of the answer pipeline: a text delta of the final answer, or (last) the whole result."""

    text: str = ""
    result: PolicyResult | None = None
    logprobs: list[TokenLogprob] | None = None  # the tokens behind ``text``, when they were asked for


async def answer_events(
    policy: RetrievalPolicy,
    question: Question,
    ctx: PolicyContext,
    params: SamplingParams,
    *,
    stream: bool = True,
    started: float | None = None,
    ran: Ran | None = None,
) -> AsyncIterator[AnswerEvent]:
    """The one answer pipeline: prepare, then generate the final answer, token by token when ``stream``
    or in one piece otherwise (the engines' one-piece call is cheaper than collecting their stream);
    yields the answer's text deltas (leading whitespace dropped), then the result, whose answer is the
    deltas joined with trailing whitespace stripped. ``started``: when the request began (for total_s);
    ``ran``: updated with the tokens run so far."""
    started = time.perf_counter() if started is None else started
    ran = ran if ran is not None else Ran()
    counted = _counting(ctx, ran)
    standalone = await standalone_question(policy, question, counted) if question.history else None
    if standalone is not None:
        question = replace(question, query=standalone.query)
    prepared = await policy.prepare(question, counted)
    if standalone is not None:
        prepared.steps.insert(0, standalone.step)
        if standalone.stats is not None:
            prepared.llm_calls_before += 1
            prepared.prompt_tokens_before += standalone.stats.prompt_tokens
            prepared.completion_tokens_before += standalone.stats.completion_tokens
        prepared.retrieve_s += standalone.seconds
    ran.prompt_tokens, ran.completion_tokens = prepared.prompt_tokens_before, prepared.completion_tokens_before
    parts: list[str] = []
    answered_by: str | None = None
    finish = "length"
    stats = GenerationStats()
    logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None

    def emit(text: str, tokens: list[TokenLogprob] | None = None) -> AnswerEvent | None:
        text = text if parts else text.lstrip()
        if tokens and logprobs is not None:
            logprobs.extend(tokens)
        if not text and not tokens:
            return None
        if text:
            parts.append(text)
        return AnswerEvent(text=text, logprobs=tokens or None)

    if prepared.answer is not None:
        # Preparing produced the answer; its call and tokens are already counted in the *_before figures.
        if (ev := emit(prepared.answer.text)) is not None:
            yield ev
        finish = prepared.answer.finish_reason
        stats = replace(prepared.answer.stats, prompt_tokens=0, completion_tokens=0)
        llm_calls = prepared.llm_calls_before
    else:
        chunks = prompt_chunks(prepared.passages, prepared.excerpts)
        args = (prepared.messages, params, prepared.assistant_prefix, chunks)
        final_generate, final_stream = ctx.generate, ctx.stream
        first = None
        if ctx.escalation is not None and not params.shapes_output:
            first, escalate = await _first_answer(question, prepared, ctx, params, args)
            ran.prompt_tokens, ran.completion_tokens = prepared.prompt_tokens_before, prepared.completion_tokens_before
            if escalate:
                final_generate, final_stream = ctx.escalation.generate, ctx.escalation.stream
                answered_by = ran.escalated_to = ctx.escalation.model
        if (ev := emit(prepared.assistant_prefix)) is not None:
            yield ev
        if first is not None and answered_by is None:
            # The first answer stands: it goes out as it is (its tokens are in the *_before figures).
            if (ev := emit(first.text)) is not None:
                yield ev
            finish, stats = first.finish_reason, replace(first.stats, prompt_tokens=0, completion_tokens=0)
        elif stream:
            async for chunk in final_stream(*args):
                if chunk.prompt_tokens or chunk.completion_tokens:
                    ran.prompt_tokens = prepared.prompt_tokens_before + chunk.prompt_tokens
                    ran.completion_tokens = prepared.completion_tokens_before + chunk.completion_tokens
                    if answered_by is not None:
                        ran.escalation_prompt_tokens = chunk.prompt_tokens
                        ran.escalation_completion_tokens = chunk.completion_tokens
                if (ev := emit(chunk.text, chunk.logprobs)) is not None:
                    yield ev
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                if chunk.stats is not None:
                    stats = chunk.stats
        else:
            whole = await final_generate(*args)
            if (ev := emit(whole.text, whole.logprobs)) is not None:
                yield ev
            finish, stats = whole.finish_reason, whole.stats
        llm_calls = prepared.llm_calls_before + (0 if first is not None and answered_by is None else 1)
        ran.prompt_tokens = prepared.prompt_tokens_before + stats.prompt_tokens
        ran.completion_tokens = prepared.completion_tokens_before + stats.completion_tokens
        if first is not None and answered_by is not None:
            ran.escalation_prompt_tokens = stats.prompt_tokens
            ran.escalation_completion_tokens = stats.completion_tokens
        if first is None or answered_by is not None:
            prepared.steps.append(
                {"step": "generate", "completion_tokens": stats.completion_tokens, "finish_reason": finish}
            )
    fmt = params.response_format
    if fmt is not None and finish == "stop":
        # An answer cut at max_tokens cannot be whole JSON; one that ended must be, or the constraint gave up.
        violation = fmt.violation("".join(parts))
        if violation is not None:
            raise OutputFormatError(f"the engine could not hold the answer to response_format: {violation}")
    yield AnswerEvent(
        result=PolicyResult(
            answer="".join(parts).rstrip(),
            finish_reason=finish,
            passages=prepared.passages,
            steps=prepared.steps,
            retrieval_steps=prepared.retrieval_steps,
            llm_calls=llm_calls,
            prompt_tokens=prepared.prompt_tokens_before + stats.prompt_tokens,
            completion_tokens=prepared.completion_tokens_before + stats.completion_tokens,
            timings={
                "retrieve_s": prepared.retrieve_s,
                "queue_s": stats.queue_s,
                "prefill_s": stats.prefill_s,
                "decode_s": stats.decode_s,
                "ttft_s": stats.ttft_s,
                "total_s": time.perf_counter() - started,
            },
            speculative=stats.speculative,
            prompt_cache=prompt_cache_record(stats),
            logprobs=logprobs,
            answered_by=answered_by,
        )
    )


async def run_policy(
    policy: RetrievalPolicy, question: Question, ctx: PolicyContext, params: SamplingParams
) -> PolicyResult:
    """The answer pipeline collected: prepare, then generate the final answer in one piece."""
    async for ev in answer_events(policy, question, ctx, params, stream=False):
        if ev.result is not None:
            return ev.result
    raise AssertionError("the answer pipeline ends with its result")


def prompt_cache_record(stats: Any) -> dict[str, Any] | None:
    """The trace's record of how the final prompt's KV was obtained (None when no cache was involved)."""
    out: dict[str, Any] = {}
    if stats.chunk_cache is not None:
        out["chunk_kv"] = stats.chunk_cache
    if stats.cached_prompt_tokens is not None:
        out["prefix_cached_tokens"] = stats.cached_prompt_tokens
    return out or None
