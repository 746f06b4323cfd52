"""The records the answer pipeline takes and gives: the request it answers (`AnswerRequest`) and the events
of a streamed answer (`StreamEvent`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retrieval.generation import ResponseFormat, TokenLogprob
from retrieval.policies.base import Question, Ran
from router.plan import SlaContext


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


@dataclass
class StreamEvent:
    """A text delta, or (last) the whole answer's record with ``done`` set."""

    text: str = ""
    done: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None  # the tokens behind ``text``, when asked for
