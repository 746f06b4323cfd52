"""The retrieval-policy interface (what a policy is given, what it prepares, what it returns) and the helpers
policies share; the pipeline that runs a policy is `retrieval/answering.py`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ConfigDict
from typing_extensions import TypedDict  # pydantic and FastAPI read it on Python 3.11

from retrieval.config import RetrievalConfig
from retrieval.documents import Passage
from retrieval.generation import (
    ChatMessage,
    GenerationChunk,
    GenerationResult,
    SamplingParams,
    SignalResult,
    TokenLogprob,
)
from retrieval.prompts import AnswerStyle, build_messages, canonical_order, fit_passages, passage_body
from retrieval.screening import screen
from retrieval.selection import select_sentences


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


class Excerpt(TypedDict):
    """The lines of one passage a prompt of selected sentences kept (`retrieval.context: sentences`)."""

    document_id: str
    chunk: int
    lines: str


class Screened(TypedDict):
    """A retrieved passage left out because it tries to instruct the model, and the screen's rules it matched."""

    document_id: str
    chunk: int
    rules: list[str]


class Trigger(TypedDict):
    """The token whose uncertainty made DRAGIN retrieve."""

    token: str
    index: int
    score: float


class Quote(TypedDict):
    """One of the passages' sentences quoted under an answer (retrieval/evidence.py)."""

    passage: int  # 1-based, numbered as the citations are
    text: str


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
        "screened_out": list[Screened],  # retrieval.injection: drop
        # reason (multi-step) and generate
        "sentence": str,
        "completion_tokens": int,
        "finish_reason": str | None,
        # generate under DRAGIN
        "max_rind": float,
        "signals": str,
        "trigger": Trigger | None,
        # select (retrieval.context: sentences): the lines of each passage the prompt kept
        "from_passages": int,
        "max_tokens": int,
        "excerpts": list[Excerpt],
        # followup: the question made standalone ("method": history or model); evidence: how its lines were
        # ranked ("method": words or words+embedder)
        "method": str,
        # cascade: the first model's answer, its confidence, whether the next model answered again and why
        "model": str,
        "answer": str,
        "confidence": float,
        "token_probability": float | None,
        "escalated": bool,
        "escalated_to": str,
        "reasons": list[str],
        # evidence: the passages' sentences quoted under the answer, and the checks it failed ("reasons")
        "quotes": list[Quote],
        # classify (adaptive): the router's verdict
        "class": str | None,
        "policy": str,
        "probabilities": dict[str, float],
        "fallback": str,
        "classifier": str,
    },
    total=False,
)
# A plug-in policy's own keys stay in the record as they are (pydantic would otherwise drop every key not
# named above when it validates the trace).
Step.__pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[attr-defined]


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
    # The passages as the prompt shows them when cut to the sentences the question asks about (`retrieval.context:
    # sentences`); ``passages`` stays what was retrieved (citations, the support check).
    excerpts: list[Passage] = field(default_factory=list)


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
    k = ctx.top_k
    if ctx.settings is not None and ctx.settings.context == "sentences":
        k = max(k, ctx.settings.sentence_candidates)
    passages = await ctx.retrieve(query, k)
    screened: list[Screened] = []
    if ctx.settings is not None and ctx.settings.injection == "drop":
        # A passage that tries to instruct the model is left out of the prompt and the citations alike.
        kept = []
        for p in passages:
            rules = screen(passage_body(p))
            if rules:
                screened.append({"document_id": p.chunk.doc_id, "chunk": p.chunk.chunk_index, "rules": rules})
            else:
                kept.append(p)
        passages = kept
    spent = time.perf_counter() - start
    step: Step = {
        "step": "retrieve",
        "query": query,
        "top_k": k,
        "hits": [
            {"document_id": p.chunk.doc_id, "chunk": p.chunk.chunk_index, "score": round(p.score, 4)} for p in passages
        ],
        "seconds": round(spent, 4),
    }
    if screened:
        step["screened_out"] = screened
    steps.append(step)
    return passages, spent


@dataclass
class FinalPrompt:
    messages: list[ChatMessage]
    excerpts: list[Passage]  # the passages cut to sentences for this prompt; empty when shown whole
    # What the answer cites: the retrieved passages given (every one when shown whole, else those an excerpt came
    # from, whole, in the prompt's order).
    cited: list[Passage]


def final_messages(question: Question, passages: list[Passage] | None, ctx: PolicyContext) -> list[ChatMessage]:
    return final_prompt(question, passages, ctx).messages


def final_prompt(
    question: Question, passages: list[Passage] | None, ctx: PolicyContext, steps: list[Step] | None = None
) -> FinalPrompt:
    """The answer's prompt over ``passages``; with ``steps``, a ``select`` step joins them when the prompt holds
    selected lines instead of whole passages (which lines of which passage, so a reader of the trace sees what
    the model was shown)."""
    excerpts: list[Passage] = []
    if passages and ctx.settings is not None and ctx.settings.context == "sentences":
        # The prompt holds the passages' lines that bear on the question, within `sentence_tokens`; citations and
        # the support check keep the passages whole, and the excerpts reach the engine as texts made for this
        # prompt (PromptChunk.stored).
        excerpts = select_sentences(question.text, passages, ctx.settings.sentence_tokens, context=question.query)
        if steps is not None and excerpts:
            steps.append(
                {
                    "step": "select",
                    "query": question.search_text,
                    "from_passages": len(passages),
                    "max_tokens": ctx.settings.sentence_tokens,
                    "excerpts": [
                        {"document_id": e.chunk.doc_id, "chunk": e.chunk.chunk_index, "lines": e.chunk.text}
                        for e in excerpts
                    ],
                }
            )
    kept = excerpts or (None if passages is None else fit_passages(passages, ctx.max_context_tokens))
    if kept and ctx.settings is not None and ctx.settings.canonical_chunk_order:
        kept = canonical_order(kept)
    fence = ctx.settings is not None and ctx.settings.injection != "off"
    messages = build_messages(
        question.text, kept, style=question.style, history=question.history, system=question.system, fence=fence
    )
    cited = passages or []
    if excerpts:
        whole = {(p.chunk.namespace, p.chunk.doc_id, p.chunk.chunk_index): p for p in cited}
        cited = [whole[(e.chunk.namespace, e.chunk.doc_id, e.chunk.chunk_index)] for e in excerpts]
    return FinalPrompt(messages, excerpts, cited)
