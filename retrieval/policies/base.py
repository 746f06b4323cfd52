"""The retrieval-policy interface and what a policy returns."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from typing_extensions import TypedDict  # pydantic and FastAPI read it on Python 3.11

from retrieval import followups, grounding
from retrieval.config import RetrievalConfig
from retrieval.documents import Passage
from retrieval.generation import (
    ChatMessage,
    GenerationChunk,
    GenerationResult,
    GenerationStats,
    SamplingParams,
    SignalResult,
    TokenLogprob,
)
from retrieval.prompts import AnswerStyle, build_messages, canonical_order, chunk_texts, fit_passages


@dataclass
class PolicyContext:
    """What a policy may call. The library path passes local objects, the Serve path handles."""

    retrieve: Callable[[str, int], Awaitable[list[Passage]]]
    # (messages, params, assistant_prefix="") -> ...; the prefix is text the answer continues from.
    generate: Callable[..., Awaitable[GenerationResult]]
    stream: Callable[..., AsyncIterator[GenerationChunk]]
    generate_with_signals: Callable[..., Awaitable[SignalResult]] | None = None
    top_k: int = 4
    max_context_tokens: int = 1200
    settings: RetrievalConfig | None = None
    # The request's sampling for the final answer (policies that draft the answer themselves use it).
    params: SamplingParams | None = None
    # The router's classification, for `adaptive`, as the plan serialises it (``class``, ``policy``,
    # ``probabilities``, ...): the router's `Complexity` sits above this layer.
    complexity: dict[str, Any] | None = None
    # The confidence cascade's next model, when the plan has one: it answers again when this answer is unsure.
    escalation: Escalation | None = None


@dataclass
class Escalation:
    model: str
    generate: Callable[..., Awaitable[GenerationResult]]
    stream: Callable[..., AsyncIterator[GenerationChunk]]
    min_confidence: float


@dataclass
class Question:
    text: str
    history: list[ChatMessage] = field(default_factory=list)
    system: str | None = None
    style: AnswerStyle = "chat"
    # What retrieval searches for when it is not the text: a follow-up made standalone (`retrieval.followups`).
    query: str | None = None

    @property
    def search_text(self) -> str:
        return self.query or self.text


class Hit(TypedDict):
    """One passage a retrieval step found."""

    document_id: str
    chunk: int
    score: float


class Trigger(TypedDict):
    """The token whose uncertainty made DRAGIN retrieve."""

    token: str
    index: int
    score: float


# One step of a policy's trace, as the answer's record shows it: ``step`` names its kind (classify, retrieve,
# reason, generate; a plug-in policy may add kinds of its own) and the other keys are those of its kind.
# Functional form: ``class`` (the classifier's verdict) is a keyword.
Step = TypedDict(
    "Step",
    {
        "step": str,
        "seconds": float,
        # retrieve
        "query": str,
        "top_k": int,
        "hits": list[Hit],
        # reason (multi-step) and generate
        "sentence": str,
        "completion_tokens": int,
        "finish_reason": str | None,
        # generate under DRAGIN
        "max_rind": float,
        "signals": str,
        "trigger": Trigger | None,
        # followup: the question made standalone ("method": history or model)
        "method": str,
        # cascade: the first model's answer, its confidence, whether the next model answered again and why
        "model": str,
        "answer": str,
        "confidence": float,
        "token_probability": float | None,
        "escalated": bool,
        "escalated_to": str,
        "reasons": list[str],
        # classify (adaptive): the router's verdict
        "class": str | None,
        "policy": str,
        "probabilities": dict[str, float],
        "fallback": str,
        "classifier": str,
    },
    total=False,
)


@dataclass
class Prepared:
    """The final generation a policy asks for, and how it got there."""

    messages: list[ChatMessage]
    passages: list[Passage]
    steps: list[Step]
    retrieval_steps: int
    retrieve_s: float
    llm_calls_before: int = 0
    prompt_tokens_before: int = 0
    completion_tokens_before: int = 0
    # The final answer continues from this text (DRAGIN keeps what it had before a retrieval).
    assistant_prefix: str = ""
    # Set when preparing already produced the final answer (no further generation needed).
    answer: GenerationResult | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PolicyResult:
    answer: str
    finish_reason: str
    passages: list[Passage]
    steps: list[Step]
    retrieval_steps: int
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float]
    # The final generation's speculative-decoding figures, when the worker ran a draft pair.
    speculative: dict[str, Any] | None = None
    # The final generation's prompt-cache figures: chunk-KV reuse (torch) or prefix-cache hits (vLLM).
    prompt_cache: dict[str, Any] | None = None
    logprobs: list[TokenLogprob] | None = None  # the final answer's tokens, when asked for
    # The model that gave the final answer when it is not the plan's (the cascade escalated).
    answered_by: str | None = None


class PolicyFacts:
    """The facts most policies share (a policy class may inherit them and override what differs): one
    retrieval pass, `adaptive` may choose it, no label class of its own, one model call."""

    rank = 1
    choosable = True
    label_class: str | None = None

    def max_llm_calls(self, settings: RetrievalConfig) -> int:
        return 1


class RetrievalPolicy(Protocol):
    """A retrieval policy, with the facts the layers above read from it (the router, the SLA controller,
    label collection and config validation never name a policy)."""

    name: str
    # How much retrieval it does, for an SLA tier's quality floor: 0 none, 1 one pass or on demand, 2 step
    # by step. `min_policy: single` admits every policy ranked at least as `single`.
    rank: int
    # Whether `adaptive` and the SLA controller may choose it (adaptive itself may not).
    choosable: bool
    # Adaptive-RAG's class of a question this is the simplest policy to answer (A, B or C); None: the
    # ladder's labels do not try it.
    label_class: str | None

    def max_llm_calls(self, settings: RetrievalConfig) -> int:
        """Model calls one question may cost at most (a budget reservation covers this many)."""

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        """Do the retrieval (and any intermediate reasoning) and build the final prompt."""


async def retrieve_step(query: str, ctx: PolicyContext, steps: list[Step]) -> tuple[list[Passage], float]:
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
    if kept and ctx.settings is not None and ctx.settings.canonical_chunk_order:
        kept = canonical_order(kept)
    return build_messages(question.text, kept, style=question.style, history=question.history, system=question.system)


@dataclass
class Ran:
    """The tokens the model has run for one answer so far, kept up to date by `answer_events` whatever
    happens next: a request that fails or whose client leaves is charged these. Each call a policy makes
    while preparing counts as it returns (a call that itself fails part way is not known to have run)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


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
        args = (prepared.messages, params, prepared.assistant_prefix, chunk_texts(prepared.passages))
        final_generate, final_stream = ctx.generate, ctx.stream
        first = None
        if ctx.escalation is not None and not params.shapes_output:
            first, escalate = await _first_answer(question, prepared, ctx, params, args)
            ran.prompt_tokens, ran.completion_tokens = prepared.prompt_tokens_before, prepared.completion_tokens_before
            if escalate:
                final_generate, final_stream = ctx.escalation.generate, ctx.escalation.stream
                answered_by = ctx.escalation.model
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
        if first is None or answered_by is not None:
            prepared.steps.append(
                {"step": "generate", "completion_tokens": stats.completion_tokens, "finish_reason": finish}
            )
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
