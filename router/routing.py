"""Picks the plan for a question: the request's explicit choices, the configured defaults, and for
`adaptive` and `model: auto` the measured quality table (router/quality.py): the (model, policy) whose
expected quality under the classifier's class probabilities, net of ``router.quality_per_second`` × its
latency, is the highest (or, with that unset, the cheapest within ``router.quality_margin`` of the best).
Without a table, `adaptive` maps the class to a policy
(A → none, B → single, C → multi or dragin) and `auto` is the first configured model."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np

from retrieval.errors import UnknownPolicyError
from retrieval.policies.registry import ADAPTIVE, available_policies, choosable_policies, label_ladder
from router.classifier import ComplexityClassifier
from router.config import RouterSettings, escalation_target
from router.errors import RouterArtifactError, UnknownModelError
from router.plan import Complexity, Plan, RouteDecision
from router.quality import QualityTable

logger = logging.getLogger(__name__)

AUTO_MODEL = "auto"


class ConfigRouter:
    def __init__(
        self,
        config: RouterSettings,
        classifier: ComplexityClassifier | None = None,
        *,
        embedding_dim: int | None = None,
        quality: QualityTable | None = None,
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
        self.quality = quality
        self.quality_error: str | None = None
        if quality is None and config.router.quality_table:
            try:
                self.quality = QualityTable.load(config.router.quality_table)
            except RouterArtifactError as exc:
                # Documented fallback: `auto` is the first model and `adaptive` maps classes to policies.
                self.quality_error = str(exc)
                logger.warning("quality table unavailable, auto picks the first model: %s", exc)
        elif quality is None:
            self.quality_error = "router.quality_table is not set"

    @functools.cached_property
    def _routed_models(self) -> list[str]:
        """Configured models the quality table knows (only those can be compared); fixed once loaded."""
        if self.quality is None:
            return []
        return [m for m in self.model_ids if m in self.quality.table]

    def routes_models(self, model: str | None) -> bool:
        return model in (None, AUTO_MODEL) and len(self._routed_models) > 1

    def needs_embedding(self, policy: str | None, model: str | None = None) -> bool:
        chosen = policy or self.config.retrieval.default_policy
        return self.classifier is not None and (chosen == ADAPTIVE or self.routes_models(model))

    def resolve_model(self, model: str | None) -> str:
        if model is None or model == AUTO_MODEL:
            return self.config.default_model.id
        if model not in self.model_ids:
            raise UnknownModelError(
                f"model {model!r} does not exist; available: {', '.join([AUTO_MODEL, *self.model_ids])}"
            )
        return model

    def classify(self, question: str, embedding: Any) -> Complexity:
        cfg = self.config.router
        if self.classifier is None:
            return Complexity(
                cls=None, policy=cfg.fallback_policy, fallback=f"classifier unavailable: {self.classifier_error}"
            )
        if embedding is None and self.quality is not None:
            # Model routing asked without an embedding (a pinned policy, no classifier input): the
            # class prior of the table's training labels stands in for the classifier.
            return Complexity(
                cls=None,
                probabilities=self.quality.prior(),
                policy=cfg.fallback_policy,
                fallback="no embedding: the training labels' class prior",
            )
        if embedding is None:
            raise ValueError("adaptive routing needs the question's embedding")
        start = time.perf_counter()
        label, probs = self.classifier.classify(np.asarray(embedding, dtype=np.float32), question)
        # Each class runs the registry's simplest policy for it (none, single, multi); C may be set to dragin.
        by_class: dict[str, str] = {}
        for name, cls in label_ladder():
            by_class.setdefault(cls, name)
        policy = cfg.multi_hop_policy if label == "C" else by_class[label]
        return Complexity(
            cls=label,
            probabilities=probs,
            policy=policy,
            classifier=self.classifier.header.get("version", "unversioned"),
            seconds=round(time.perf_counter() - start, 6),
        )

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
        complexity: Complexity | None = None
        routing = None
        if policy == ADAPTIVE or self.routes_models(model):
            complexity = self.classify(question, embedding)
            routing = self._route_by_quality(complexity, model_id if not self.routes_models(model) else None, policy)
        if routing is not None and complexity is not None:
            chosen = routing["chosen"]
            model_id = chosen["model"]
            mcfg = self.config.model(model_id)
            complexity = complexity.model_copy(update={"policy": chosen["policy"]})
            cls = complexity.cls
            probs = complexity.probabilities or {}
            rule = (
                f"the best of {len(routing['candidates'])} candidates net of {routing['per_second']:g} a second"
                if routing.get("per_second") is not None
                else f"the cheapest of {len(routing['candidates'])} candidates expecting at least "
                f"{1 - routing['margin']:.0%} of the best quality"
            )
            reasons.append(
                (f"class {cls} (p={probs[cls]:.2f})" if cls else "class prior (no classifier)")
                + f": {chosen['model']}/{chosen['policy']} is {rule} "
                f"({chosen['expected_quality']:.3f} in {chosen['expected_latency_s']:.2f} s; best quality "
                f"{routing['best_quality']:.3f}, table {routing['table']})"
            )
        elif policy == ADAPTIVE and complexity is not None:
            if complexity.cls is None:
                reasons.append(f"classifier unavailable, so {complexity.policy!r} (router.fallback_policy)")
            else:
                probs = complexity.probabilities or {}
                reasons.append(f"class {complexity.cls} (p={probs[complexity.cls]:.2f}) runs {complexity.policy!r}")
        if model in (None, AUTO_MODEL) and routing is None:
            why = self.quality_error or "the quality table knows fewer than two configured models"
            reasons.append(f"model {model_id!r}, the first configured, for 'auto' ({why})")
        elif routing is None or model not in (None, AUTO_MODEL):
            reasons.append(f"model {model_id!r}" + (" requested" if model not in (None, AUTO_MODEL) else ""))
        escalate_to = self.escalation(model_id) if model in (None, AUTO_MODEL) else None
        if escalate_to is not None:
            reasons.append(
                f"cascade: {escalate_to!r} answers again below confidence {self.config.router.cascade.min_confidence}"
            )
        plan = Plan(
            policy=policy,
            top_k=top_k or self.config.retrieval.top_k,
            model=model_id,
            escalate_to=escalate_to,
            max_tokens=max_tokens or mcfg.default_max_tokens,
            use_response_cache=self.config.cache.enabled and cacheable,
            complexity=complexity,
            routing=routing,
        )
        return RouteDecision(plan=plan, reason="; ".join(reasons))

    def escalation(self, model_id: str) -> str | None:
        """The model ``model_id``'s answers escalate to in the confidence cascade (None: no cascade, or it is
        the ladder's last)."""
        return escalation_target(self.config.router.cascade, [m.id for m in self.config.models], model_id)

    def _route_by_quality(self, complexity: Complexity, pinned_model: str | None, policy: str) -> dict[str, Any] | None:
        """The quality table's choice among the candidate (model, policy) pairs, or None without one."""
        if self.quality is None:
            return None
        probs = complexity.probabilities
        if not probs:
            if complexity.cls is None and policy == ADAPTIVE:
                return None  # the classifier is unavailable: the documented fallback policy runs
            probs = self.quality.prior()
        models = [pinned_model] if pinned_model else self._routed_models
        policies = (
            [p for p in choosable_policies() if any(self.quality.has(m, p) for m in models)]
            if policy == ADAPTIVE
            else [policy]
        )
        try:
            chosen, pairs = self.quality.choose(
                models, policies, probs, self.config.router.quality_margin, self.config.router.quality_per_second
            )
        except ValueError:
            return None
        return {
            "table": self.quality.version,
            "per_second": self.config.router.quality_per_second,
            "margin": self.config.router.quality_margin,
            "probabilities": probs,
            "best_quality": round(max(c.quality for c in pairs), 4),
            "chosen": chosen.describe(),
            "candidates": [c.describe() for c in pairs],
        }
