"""Picks the plan for a question. For now from config and the request's explicit choices; the
Adaptive-RAG complexity classifier plugs in here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval.errors import UnknownPolicyError
from retrieval.policies.registry import available_policies
from router.errors import UnknownModelError
from router.plan import Plan, RouteDecision

if TYPE_CHECKING:
    from services.config import AppConfig

AUTO_MODEL = "auto"


class ConfigRouter:
    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.model_ids = [m.id for m in config.models]

    def resolve_model(self, model: str | None) -> str:
        if model is None or model == AUTO_MODEL:
            return self.config.default_model.id
        if model not in self.model_ids:
            raise UnknownModelError(
                f"model {model!r} does not exist; available: {', '.join([AUTO_MODEL, *self.model_ids])}"
            )
        return model

    def route(
        self,
        question: str,
        *,
        model: str | None = None,
        policy: str | None = None,
        top_k: int | None = None,
        max_tokens: int | None = None,
        cacheable: bool = True,
    ) -> RouteDecision:
        model_id = self.resolve_model(model)
        mcfg = self.config.model(model_id)
        reasons = []
        if policy is None:
            policy = self.config.retrieval.default_policy
            reasons.append(f"policy {policy!r} from config (retrieval.default_policy)")
        else:
            if policy not in available_policies():
                raise UnknownPolicyError(
                    f"unknown retrieval policy {policy!r}; valid: {', '.join(available_policies())}"
                )
            reasons.append(f"policy {policy!r} requested")
        reasons.append(f"model {model_id!r}" + (" chosen for 'auto'" if model in (None, AUTO_MODEL) else ""))
        plan = Plan(
            policy=policy,
            top_k=top_k or self.config.retrieval.top_k,
            model=model_id,
            max_tokens=max_tokens or mcfg.default_max_tokens,
            use_response_cache=self.config.cache.enabled and cacheable,
        )
        return RouteDecision(plan=plan, reason="; ".join(reasons))
