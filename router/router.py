"""Picks the plan for a question: the request's explicit choices, the configured defaults, and for
`adaptive` the complexity classifier's class (A → none, B → single, C → multi or dragin)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import UnknownPolicyError
from retrieval.policies.registry import available_policies
from router.classifier import ComplexityClassifier
from router.errors import RouterArtifactError, UnknownModelError
from router.plan import Plan, RouteDecision

if TYPE_CHECKING:
    from services.config import AppConfig

logger = logging.getLogger(__name__)

AUTO_MODEL = "auto"
ADAPTIVE = "adaptive"


class ConfigRouter:
    def __init__(
        self, config: AppConfig, classifier: ComplexityClassifier | None = None, *, embedding_dim: int | None = None
    ) -> None:
        self.config = config
        self.model_ids = [m.id for m in config.models]
        self.classifier = classifier
        self.classifier_error: str | None = None
        if classifier is None and config.router.artifact:
            try:
                self.classifier = ComplexityClassifier.load(config.router.artifact, expected_dim=embedding_dim)
            except RouterArtifactError as exc:
                # Documented fallback: `adaptive` runs router.fallback_policy and says why.
                self.classifier_error = str(exc)
                logger.error(
                    "complexity classifier unavailable, adaptive falls back to %r: %s",
                    config.router.fallback_policy,
                    exc,
                )
        elif classifier is None:
            self.classifier_error = "router.artifact is not set"

    def needs_embedding(self, policy: str | None) -> bool:
        chosen = policy or self.config.retrieval.default_policy
        return chosen == ADAPTIVE and self.classifier is not None

    def resolve_model(self, model: str | None) -> str:
        if model is None or model == AUTO_MODEL:
            return self.config.default_model.id
        if model not in self.model_ids:
            raise UnknownModelError(
                f"model {model!r} does not exist; available: {', '.join([AUTO_MODEL, *self.model_ids])}"
            )
        return model

    def classify(self, question: str, embedding: Any) -> dict[str, Any]:
        cfg = self.config.router
        if self.classifier is None:
            return {
                "class": None,
                "policy": cfg.fallback_policy,
                "fallback": f"classifier unavailable: {self.classifier_error}",
            }
        if embedding is None:
            raise ValueError("adaptive routing needs the question's embedding")
        start = time.perf_counter()
        label, probs = self.classifier.classify(np.asarray(embedding, dtype=np.float32), question)
        policy = {"A": "none", "B": "single", "C": cfg.multi_hop_policy}[label]
        return {
            "class": label,
            "probabilities": probs,
            "policy": policy,
            "classifier": self.classifier.header.get("version", "unversioned"),
            "seconds": round(time.perf_counter() - start, 6),
        }

    def route(
        self,
        question: str,
        *,
        model: str | None = None,
        policy: str | None = None,
        top_k: int | None = None,
        max_tokens: int | None = None,
        cacheable: bool = True,
        embedding: Any = None,
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
        complexity = None
        if policy == ADAPTIVE:
            complexity = self.classify(question, embedding)
            if complexity["class"] is None:
                reasons.append(f"classifier unavailable, so {complexity['policy']!r} (router.fallback_policy)")
            else:
                probs = complexity["probabilities"]
                reasons.append(
                    f"class {complexity['class']} (p={probs[complexity['class']]:.2f}) runs {complexity['policy']!r}"
                )
        reasons.append(f"model {model_id!r}" + (" chosen for 'auto'" if model in (None, AUTO_MODEL) else ""))
        plan = Plan(
            policy=policy,
            top_k=top_k or self.config.retrieval.top_k,
            model=model_id,
            max_tokens=max_tokens or mcfg.default_max_tokens,
            use_response_cache=self.config.cache.enabled and cacheable,
            complexity=complexity,
        )
        return RouteDecision(plan=plan, reason="; ".join(reasons))
