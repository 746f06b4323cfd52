"""A Plan: everything decided about how to answer one question."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    policy: str = Field(description="Retrieval policy name.")
    top_k: int = Field(gt=0, description="Passages per retrieval step.")
    model: str = Field(description="Model id of the worker that answers.")
    max_tokens: int = Field(gt=0, description="Completion token cap.")
    use_response_cache: bool = Field(description="Whether a cached answer may be served.")
    complexity: dict[str, Any] | None = Field(
        None, description="For `adaptive`: the class, its probabilities and the policy it runs."
    )
    routing: dict[str, Any] | None = Field(
        None,
        description="For `auto`/`adaptive` with a quality table: the (model, policy) chosen, the expected quality "
        "and latency of every candidate, and why each other one lost.",
    )
    speculative: bool = Field(True, description="Decode with the worker's draft pair, if it has one.")
    chunk_cache: bool = Field(True, description="Reuse stored chunk KV, if the worker has the cache on.")

    def label(self) -> str:
        """A short, bounded-cardinality name for metrics."""
        return f"{self.policy}/{self.model}"


class RouteDecision(BaseModel):
    plan: Plan
    reason: str
    sla: dict[str, Any] | None = Field(
        None, description="The SLA controller's admission: ticket, tier, targets, candidates considered."
    )


class Outcome(BaseModel):
    """How an admitted request ended, as the pipeline reports it to the SLA controller (it crosses the
    Ray boundary from the gateway to the router)."""

    model_config = ConfigDict(frozen=True)

    ok: bool = Field(description="Whether an answer was delivered (False: it failed, or the client left).")
    latency_s: float = Field(ge=0, description="Seconds from the request to its end.")
    prompt_tokens: int = Field(0, ge=0, description="Prompt tokens the model ran (0 for a cached answer).")
    completion_tokens: int = Field(0, ge=0, description="Completion tokens the model ran (0 for a cached answer).")
    cache_hit: bool = Field(False, description="Whether the answer came from the response cache.")
    ttft_s: float | None = Field(None, ge=0, description="Seconds to the first token; None: latency_s.")


class Settlement(BaseModel):
    """What the controller made of an outcome."""

    model_config = ConfigDict(frozen=True)

    met: bool = Field(description="Whether the request met its tier's latency and TTFT targets.")
    budget: dict[str, Any] | None = Field(None, description="The tenant's usage after charging, when it has a budget.")
