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
