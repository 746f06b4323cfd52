"""The router package's config sections: the complexity router and the SLA controller."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import Field, field_validator

from cache.config import CacheConfig, ChunkCacheConfig
from core.config import PROJECT_ROOT, Section
from retrieval.config import RetrievalConfig
from retrieval.policies.registry import choosable_policies


class CascadeConfig(Section):
    enabled: bool = Field(
        False,
        description="A confidence cascade for `model: auto`: the planned model answers first, and an answer whose "
        "confidence is below min_confidence is answered again by the next model of the ladder over the same "
        "passages. Off by default: the embedded default's ladder has no stronger model than Qwen2.5-Coder-0.5B "
        "(README: The confidence cascade).",
    )
    to: dict[str, str] = Field(
        default_factory=dict,
        description="Model id -> the model its answers escalate to; a model not named escalates to the next "
        "configured model (the ladder's order), the last to none.",
    )
    min_confidence: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Escalate below this confidence (the answer tokens' geometric-mean probability; 0 for an "
        "answer that restates the question, names what no passage holds or says it does not know). "
        "`ragyard calibrate-cascade --escalate-share S` picks it on training questions.",
    )
    escalate_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="The share of first answers expected to escalate at min_confidence (the share "
        "calibrate-cascade was asked for). The SLA controller prices a cascade by it: a plan gets its second "
        "step when its predicted latency plus this share x the next model's fits the tier's target.",
    )


def escalation_target(cascade: CascadeConfig, model_ids: Sequence[str], model_id: str) -> str | None:
    """The model ``model_id``'s answers escalate to in the confidence cascade (None: no cascade, or it is the
    ladder's last): ``cascade.to``'s choice, else the next configured model."""
    if not cascade.enabled:
        return None
    ids = list(model_ids)
    if model_id in cascade.to:
        target = cascade.to[model_id]
    else:
        at = ids.index(model_id) if model_id in ids else len(ids)
        target = ids[at + 1] if at + 1 < len(ids) else ""
    return target if target in ids and target != model_id else None


class RouterConfig(Section):
    artifact: str | None = Field(
        str(PROJECT_ROOT / "router" / "artifacts" / "complexity-v1.npz"),
        description="Trained complexity classifier (.npz); None disables classification.",
    )
    multi_hop_policy: str = Field(
        "multi", description="Policy `adaptive` runs for class C (multi-step) questions (e.g. multi, dragin)."
    )
    fallback_policy: str = Field(
        "single", description="Policy `adaptive` runs when the classifier is unavailable (missing or corrupt)."
    )
    quality_table: str | None = Field(
        str(PROJECT_ROOT / "router" / "artifacts" / "quality-v1.json"),
        description="Measured quality per model x policy x class (`ragyard build-quality`). With it, `model: auto` "
        "and `adaptive` pick a (model, policy) by quality_per_second (or quality_margin); None disables that.",
    )
    quality_per_second: float | None = Field(
        0.01,
        ge=0,
        description="Expected F1 a slower (model, policy) must add per extra second it is expected to take: "
        "`model: auto` and `adaptive` pick the pair with the highest expected quality - quality_per_second x "
        "its latency (0.01: one F1 point a second), and the SLA controller the plan with the highest expected "
        "quality - quality_per_second x its predicted latency (a tier may set its own). None = the cheapest "
        "pair within quality_margin of the best, and the SLA controller's best quality.",
    )
    quality_margin: float = Field(
        0.03,
        ge=0,
        le=1,
        description="With quality_per_second None: the share of the best expected F1 the router gives up for a "
        "cheaper (model, policy): 0.03 takes the cheapest pair expecting at least 97% of the best; 0 = always "
        "the best.",
    )

    cascade: CascadeConfig = Field(default_factory=CascadeConfig, description="The confidence cascade.")

    @field_validator("multi_hop_policy", "fallback_policy")
    @classmethod
    def _choosable(cls, value: str) -> str:
        if value not in choosable_policies():
            raise ValueError(f"{value!r} is not a policy adaptive may run ({', '.join(choosable_policies())})")
        return value


class SlaConfig(Section):
    """The SLA budget controller (router/controller.py) and its policy file (router/sla.py)."""

    enabled: bool = Field(
        False,
        description="Plan each request within its tier's SLO and its tenant's budget; shed with 429 under overload.",
    )
    policy_path: str | None = Field(
        None, description="SLA policy YAML (tiers, tenants, prices); None = the built-in three tiers, no tenants."
    )
    reload_interval_s: float = Field(2.0, gt=0, description="How often the policy file is checked for changes.")
    budget_url: str | None = Field(
        None, description="Budget store: memory:// or redis://host:port/db; None = REDIS_URL when set, else memory."
    )
    budget_prefix: str = Field("ragyard:budget:", min_length=1, description="Redis key prefix of the budgets.")
    latency_priors: str | None = Field(
        str(PROJECT_ROOT / "router" / "artifacts" / "latency-priors.json"),
        description="Measured latency and tokens per model x policy (`ragyard build-priors`), assumed for a plan "
        "until it has been observed; None (or a missing file) = a deliberately slow guess for every plan.",
    )


# What the router reads of the app config. The app config is composed above the router (services.config),
# so the router states the shape it consumes; services.config.AppConfig has it.
class ModelView(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def engine(self) -> str: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def default_max_tokens(self) -> int: ...
    @property
    def speculative(self) -> object | None: ...
    @property
    def chunk_cache(self) -> ChunkCacheConfig: ...
    @property
    def capabilities(self) -> frozenset[str]: ...  # the engine's, e.g. "priority_scheduling", "chunk_cache"


class ReplicasView(Protocol):
    @property
    def worker_replicas(self) -> int: ...


class RouterSettings(Protocol):
    @property
    def router(self) -> RouterConfig: ...
    @property
    def retrieval(self) -> RetrievalConfig: ...
    @property
    def cache(self) -> CacheConfig: ...
    @property
    def ray(self) -> ReplicasView: ...
    @property
    def models(self) -> Sequence[ModelView]: ...
    @property
    def default_model(self) -> ModelView: ...
    def model(self, model_id: str) -> ModelView: ...
