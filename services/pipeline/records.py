"""The records the answer pipeline takes and gives: the request it answers (`AnswerRequest`), the record of an
answer (`Answer`) or of a raw completion (`Completion`), and the events of a streamed one (`StreamEvent`).

The records are pydantic models read by attribute; their JSON (``wire()``) is what `/v1/qa` returns, what a chat
completion carries under ``ragyard``, and what the response cache stores, key for key as before they were typed."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from retrieval.answering import Ran
from retrieval.documents import Passage
from retrieval.generation import ResponseFormat, TokenLogprob
from retrieval.policies.base import Question, Step
from router.plan import Admission, Plan, RouteDecision, SlaContext


@dataclass
class AnswerRequest:
    question: Question
    model: str | None = None
    policy: str | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None  # None: none; n: each token's with its n most likely alternatives
    response_format: ResponseFormat | None = None
    # The request's id (X-Request-Id): in the record, the logs, the trace and vLLM's request ids.
    request_id: str | None = None
    # OpenTelemetry's gen_ai.operation.name for the request's span: chat, or text_completion.
    operation: str = "chat"
    # The request's span: opened by `decide`, closed when the answer (or its failure) is in.
    span: Any = None
    # The SLA context from the HTTP edge (the tenant and its X-SLA-* headers); None: the SLA controller is off.
    sla: SlaContext | None = None
    # The document namespaces the asker may read (a tenant: its own and the shared one); None: all
    # (the library path: `ragyard ask`, the benchmarks).
    namespaces: tuple[str, ...] | None = None
    # The corpus generation retrieval must read at least (the one the asker's last upload returned).
    min_generation: int = 0
    # The tokens the model has run for this request so far (the pipeline keeps it current; the edge's
    # rate limiter reads it once the response is out).
    ran: Ran = field(default_factory=Ran)


class Citation(BaseModel):
    """A passage the answer was given, as the caller sees it."""

    document_id: str
    title: str
    section: str = Field(
        "", description="The headings the chunk sits under in its document, below its title ('A › B'; '': none)."
    )
    chunk: int = Field(description="The chunk's index within its document.")
    score: float
    text: str
    source: str = ""
    page: int | None = Field(
        None, description="The page the chunk begins on (from 1), for a document with pages (PDF)."
    )

    @classmethod
    def of(cls, passage: Passage) -> Citation:
        c = passage.chunk
        return cls(
            document_id=c.doc_id,
            title=c.title,
            section=c.section,
            chunk=c.chunk_index,
            score=round(passage.score, 4),
            text=c.text,
            source=c.source,
            page=c.page or None,
        )


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> TokenUsage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class PlanRecord(Plan):
    """The plan that ran, with the router's reason for it."""

    reason: str

    @classmethod
    def of(cls, decision: RouteDecision) -> PlanRecord:
        return cls.model_validate({**decision.plan.model_dump(), "reason": decision.reason})


class SlaRecord(Admission):
    """The SLA controller's admission as the answer records it: with the router's reason and, once the
    request is settled, the tenant's budget after it."""

    model_config = ConfigDict(frozen=False)

    reason: str
    budget_after: Any = Field(None, description="The tenant's budget once this request was charged.")

    @classmethod
    def of(cls, decision: RouteDecision) -> SlaRecord | None:
        if decision.sla is None:
            return None
        return cls.model_validate({**decision.sla.model_dump(mode="json"), "reason": decision.reason})

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None or k not in ("overrides", "budget_after")}


class CacheRecord(BaseModel):
    """Where the answer came from: the response cache's verdict, and how the prompt's KV was obtained
    (``chunk_kv``, ``prefix_cached_tokens``) when a prompt cache was involved."""

    response: Literal["hit", "semantic", "miss", "stale", "bypass"] = Field(
        description="hit: served from the response cache; semantic: served from the entry of an earlier question "
        "close in meaning (cache.semantic); stale: an entry was found, but a document it was built from has changed "
        "or gone since, so it was answered afresh; miss; bypass: the cache was not asked."
    )
    semantic: dict[str, Any] | None = Field(
        None, description="A semantic hit: the earlier question it was served from and the cosine of the two."
    )
    chunk_kv: dict[str, Any] | None = Field(None, description="Chunk-KV reuse: chunks, hits per tier, recomputed.")
    prefix_cached_tokens: int | None = Field(None, description="Prompt tokens the engine's prefix cache held.")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class _Record(BaseModel):
    """What an answer and a completion record alike. Optional parts are left out of the JSON when unset."""

    id: str
    finish_reason: str | None
    model: str
    plan: PlanRecord
    timings: dict[str, float]
    usage: TokenUsage
    cache: CacheRecord
    speculative: dict[str, Any] | None = None
    logprobs: list[dict[str, Any]] | None = None

    # The keys left out of the JSON when None (every other key is always there).
    OPTIONAL: ClassVar[tuple[str, ...]] = ("speculative", "logprobs", "sla", "request_id", "support", "cascade")

    def wire(self) -> dict[str, Any]:
        """The record as JSON: the shape `/v1/qa` returns and the response cache stores."""
        out = self.model_dump(mode="json")
        return {k: v for k, v in out.items() if v is not None or k not in self.OPTIONAL}


class SentenceCheck(BaseModel):
    """One sentence of the answer against the passages it was given (`retrieval.support`)."""

    text: str
    supported: bool
    passage: int | None = Field(description="The passage (from 1, as citations are ordered) that supports it best.")
    lexical: float = Field(description="The share of the sentence's content words that passage holds.")
    similarity: float | None = Field(description="The cosine of their embeddings.")


class SupportRecord(BaseModel):
    """Whether the answer's sentences are supported by its passages: a flag per sentence, and the count of those
    that are not."""

    sentences: list[SentenceCheck]
    unsupported: int
    seconds: float


class Answer(_Record):
    """The record of one answer: what `/v1/qa` returns, and what a chat completion carries under ``ragyard``."""

    answer: str
    citations: list[Citation]
    retrieval_steps: int
    llm_calls: int
    trace: list[Step] = Field(description="The policy's steps (retrievals, generations), in order.")
    cascade: dict[str, Any] | None = Field(
        None,
        description="The confidence cascade's first answer, when the plan had one: the answer, its confidence and "
        "token probability, whether it escalated (and to which model) and why (the trace's `cascade` step).",
    )
    sla: SlaRecord | None = None
    support: SupportRecord | None = Field(
        None,
        description="Each sentence checked against the passages (retrieval.check_support; none retrieved: absent).",
    )

    # The parts of the record a chat completion carries under ``ragyard``.
    EXTENSION: ClassVar[tuple[str, ...]] = (
        "citations",
        "plan",
        "timings",
        "retrieval_steps",
        "llm_calls",
        "cache",
        "speculative",
        "cascade",
        "sla",
        "support",
    )

    def extension(self) -> dict[str, Any]:
        wire = self.wire()
        return {k: wire[k] for k in self.EXTENSION if k in wire}

    def cached(self) -> dict[str, Any]:
        """What the response cache stores: the record less its admission (another request's)."""
        out = self.wire()
        out.pop("sla", None)
        return out

    def served_from_cache(
        self,
        decision: RouteDecision,
        started: float,
        response: Literal["hit", "semantic"] = "hit",
        semantic: dict[str, Any] | None = None,
    ) -> Answer:
        """This (cached) answer as a new request's record: its own id, a cache hit (exact, or semantic with the
        question it was matched to), that request's admission, no model time."""
        return self.model_copy(
            update={
                "id": new_id("qa"),
                "cache": CacheRecord(response=response, semantic=semantic),
                "sla": SlaRecord.of(decision),
                "timings": {
                    "retrieve_s": 0.0,
                    "queue_s": 0.0,
                    "prefill_s": 0.0,
                    "decode_s": 0.0,
                    "ttft_s": 0.0,
                    "total_s": round(time.perf_counter() - started, 4),
                },
            }
        )


class Completion(_Record):
    """The record of one raw completion (`/v1/completions`): the text, no retrieval."""

    text: str
    request_id: str | None = None

    EXTENSION: ClassVar[tuple[str, ...]] = ("plan", "timings", "cache", "speculative")

    def extension(self) -> dict[str, Any]:
        wire = self.wire()
        return {k: wire[k] for k in self.EXTENSION if k in wire}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def rounded_timings(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in timings.items()}


def openai_logprobs(tokens: list[TokenLogprob] | None) -> list[dict[str, Any]] | None:
    return [t.openai() for t in tokens] if tokens is not None else None


R = TypeVar("R", Answer, Completion)


@dataclass
class StreamEvent(Generic[R]):
    """A text delta, or (last) the whole record."""

    text: str = ""
    record: R | None = None  # set on the last event only
    logprobs: list[TokenLogprob] | None = None  # the tokens behind ``text``, when asked for
