"""A Plan: everything decided about how to answer one question."""

from __future__ import annotations

from typing import (
    Any,
    NotRequired,  # pydantic reads them on Python 3.11
)

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from typing_extensions import TypedDict


class CandidateView(TypedDict):
    """One plan the SLA controller considered, as the trace shows it (`Candidate.describe`)."""

    plan: str
    quality: float
    latency_p95_s: float
    predicted_latency_s: float
    predicted_ttft_s: float
    expected_tokens: float
    worst_case_tokens: int
    estimate_from: str
    eligible: bool
    why_not: NotRequired[str]


class Complexity(BaseModel):
    """The complexity router's verdict on one question (Adaptive-RAG's A/B/C), as the plan carries it.
    Serialised with the key ``class`` (always present, null without a classifier); the other keys only
    when set."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    cls: str | None = Field(None, alias="class", description="A, B or C; None without a classifier.")
    policy: str = Field(description="The retrieval policy `adaptive` runs for this question.")
    probabilities: dict[str, float] | None = Field(None, description="The class probabilities, when known.")
    fallback: str | None = Field(None, description="Why no classifier output was used, when none was.")
    classifier: str | None = Field(None, description="The classifier artifact's version.")
    seconds: float | None = Field(None, ge=0, description="Seconds the classifier took.")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None or k == "class"}


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    policy: str = Field(description="Retrieval policy name.")
    top_k: int = Field(gt=0, description="Passages per retrieval step.")
    model: str = Field(description="Model id of the worker that answers.")
    max_tokens: int = Field(gt=0, description="Completion token cap.")
    use_response_cache: bool = Field(description="Whether a cached answer may be served.")
    complexity: Complexity | None = Field(
        None, description="For `adaptive`: the class, its probabilities and the policy it runs."
    )
    routing: dict[str, Any] | None = Field(
        None,
        description="For `auto`/`adaptive` with a quality table: the (model, policy) chosen, the expected quality "
        "and latency of every candidate, and why each other one lost.",
    )
    speculative: bool = Field(True, description="Decode with the worker's draft pair, if it has one.")
    chunk_cache: bool = Field(True, description="Reuse stored chunk KV, if the worker has the cache on.")
    escalate_to: str | None = Field(
        None, description="The confidence cascade's next model: it answers again when this model's answer is unsure."
    )

    def label(self) -> str:
        """A short, bounded-cardinality name for metrics."""
        return f"{self.policy}/{self.model}"


class SlaContext(BaseModel):
    """Who asks, and the SLA headers they sent, as the HTTP edge saw them (the SLA controller's input)."""

    model_config = ConfigDict(frozen=True)

    tenant: str | None = Field(None, description="The tenant whose key the request carries; None: an operator.")
    headers: dict[str, str] = Field(default_factory=dict, description="The request's X-SLA-* headers, as sent.")


class RouteRequest(BaseModel):
    """What the answer pipeline asks the router for one question (it crosses the Ray boundary from the gateway
    to the router): the caller's choices, the question's embedding when the router needs it, and the SLA
    context when the controller is on."""

    model_config = ConfigDict(frozen=True)

    question: str
    embedding: list[float] | None = Field(None, description="The question's embedding, for the classifier.")
    model: str | None = Field(None, description="The model asked for; None or `auto`: the router picks.")
    policy: str | None = Field(None, description="The retrieval policy asked for; None: the config's default.")
    top_k: int | None = Field(None, gt=0, description="Passages per retrieval step; None: the config's.")
    max_tokens: int | None = Field(None, gt=0, description="Completion token cap; None: the model's default.")
    cacheable: bool = Field(True, description="Whether a cached answer may serve it (not with logprobs).")
    sla: SlaContext | None = Field(None, description="The SLA context; None: the controller plans without one.")
    dry_run: bool = Field(False, description="The plan without admitting it (no ticket, nothing reserved).")

    def choices(self) -> dict[str, Any]:
        """The caller's choices as `ConfigRouter.route` takes them."""
        return {
            "model": self.model,
            "policy": self.policy,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "cacheable": self.cacheable,
            "embedding": self.embedding,
        }


class Admission(BaseModel):
    """The SLA controller's admission of one request: its ticket, the tier and targets it is held to, and what
    the decision weighed. Serialised as the answer's ``sla`` record (``class`` for the class; ``overrides`` only
    when a header set some)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    ticket: str | None = Field(description="The reservation's ticket; None for a dry run (nothing reserved).")
    tenant: str | None = Field(description="The tenant; None for an operator's request.")
    tier: str
    priority: int
    latency_ms: int = Field(description="The latency target the plan was chosen within.")
    ttft_ms: int | None = Field(description="The time-to-first-token target, if the tier has one.")
    max_tokens_per_request: int | None
    max_cost_per_request: float | None
    overrides: dict[str, Any] | None = Field(None, description="What the request's X-SLA-* headers changed.")
    cls: str | None = Field(alias="class", description="The question's complexity class, when classified.")
    degraded: bool = Field(description="Whether load made the controller pick a cheaper plan than the best.")
    queue_wait_s: float = Field(description="The queue wait the load model predicted for the plan.")
    calibration: float = Field(description="Observed over predicted latency at this priority.")
    candidates: list[CandidateView] = Field(description="Every plan considered, and why each lost.")
    policy_version: int = Field(description="The SLA policy's version in force.")
    cascade: dict[str, Any] | None = Field(
        None,
        description="With the confidence cascade on and no model named: the next model, the latency its second "
        "step is expected to add (escalate_share x its predicted latency) and whether the plan got it, and why not.",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_overrides(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None or k != "overrides"}


class RouteDecision(BaseModel):
    plan: Plan
    reason: str
    sla: Admission | None = Field(None, description="The SLA controller's admission (None: the controller is off).")


class Outcome(BaseModel):
    """How an admitted request ended, as the pipeline reports it to the SLA controller (it crosses the
    Ray boundary from the gateway to the router)."""

    model_config = ConfigDict(frozen=True)

    ok: bool = Field(description="Whether an answer was delivered (False: it failed, or the client left).")
    latency_s: float = Field(ge=0, description="Seconds from the request to its end.")
    prompt_tokens: int = Field(
        0, ge=0, description="Prompt tokens the model ran for it, delivered or not (a cached answer: its original)."
    )
    completion_tokens: int = Field(
        0, ge=0, description="Completion tokens the model ran, delivered or not (a cached answer: its original)."
    )
    cache_hit: bool = Field(False, description="Whether the answer came from the response cache.")
    model: str = Field("", description="The model that answered (priced when the router has no ticket of it).")
    escalated_to: str | None = Field(
        None, description="The cascade's next model, when the first answer escalated to it (its tokens priced apart)."
    )
    escalation_prompt_tokens: int = Field(0, ge=0, description="Of prompt_tokens, those escalated_to ran.")
    escalation_completion_tokens: int = Field(0, ge=0, description="Of completion_tokens, those escalated_to ran.")
    ttft_s: float | None = Field(None, ge=0, description="Seconds to the first token; None: latency_s.")


class Settlement(BaseModel):
    """What the controller made of an outcome."""

    model_config = ConfigDict(frozen=True)

    met: bool = Field(description="Whether the request met its tier's latency and TTFT targets.")
    budget: dict[str, Any] | None = Field(None, description="The tenant's usage after charging, when it has a budget.")
