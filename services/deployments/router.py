"""The router as a service: picks each question's plan. A plain class; Serve wraps it as the
`router` deployment, and the gateway asks it through a handle (or directly on the library path).

With `sla.enabled`, the SLA controller plans within the request's tier and its tenant's budget, and
it is told when each admitted request ends (`finish`). With the budgets in Redis, the router replicas also
share their load view and calibration there (router/shared_load.py), so any number of them admit as one.
"""

from __future__ import annotations

import logging
from typing import Any

from router.errors import RouterArtifactError
from router.plan import Outcome, RouteDecision, RouteRequest, Settlement, SlaContext
from router.priors import LatencyPriors
from router.routing import ADAPTIVE, AUTO_MODEL, ConfigRouter
from services.config import ConfigSource, load_config

logger = logging.getLogger(__name__)

# all-MiniLM-L6-v2, the embedder the retriever runs; the classifier is checked against it at load.
EMBEDDING_DIM = 384


class RouterService:
    def __init__(self, config: ConfigSource, *, embedding_dim: int = EMBEDDING_DIM) -> None:
        self.config = load_config(config)
        self.router = ConfigRouter(self.config, embedding_dim=embedding_dim)
        self.controller = None
        self.priors_error: str | None = None
        if self.config.sla.enabled:
            from router.budgets import open_ledger
            from router.controller import SlaController
            from router.sla import PolicyStore

            sla = self.config.sla
            store = PolicyStore(
                sla.policy_path, reload_interval_s=sla.reload_interval_s, models=[m.id for m in self.config.models]
            )
            shared = None
            if sla.budget_url and sla.budget_url.startswith(("redis://", "rediss://", "unix://")):
                from router.shared_load import SharedLoad

                # Router replicas share the load view and the calibration where they share the budgets.
                shared = SharedLoad(sla.budget_url, prefix=f"{sla.budget_prefix}load:")
            self.controller = SlaController(
                self.config,
                store,
                open_ledger(sla.budget_url, prefix=sla.budget_prefix),
                class_prior=self._prior(),
                model_quality=self.router.quality,
                priors=self._priors(),
                shared=shared,
            )

    def _priors(self) -> LatencyPriors | None:
        path = self.config.sla.latency_priors
        if path is None:
            return None
        try:
            return LatencyPriors.load(path)
        except RouterArtifactError as exc:
            # The controller still works: every plan is assumed slow until observed. /readyz says why.
            self.priors_error = str(exc)
            logger.warning("%s; every plan takes the fallback prior until observed", exc)
            return None

    def _prior(self) -> dict[str, float] | None:
        header = self.router.classifier.header if self.router.classifier else {}
        counts = (header.get("metrics") or {}).get("label_counts")
        if not counts:
            return None
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()}

    def needs_embedding(self, policy: str | None, model: str | None = None) -> bool:
        if self.controller is not None:
            return self.router.classifier is not None and policy in (None, ADAPTIVE)
        return self.router.needs_embedding(policy, model)

    async def route(self, request: RouteRequest) -> RouteDecision:
        """The plan for a question; a dry run: the same plan without admitting it (no ticket, no budget)."""
        if self.controller is None:
            return self.router.route(request.question, **request.choices())
        policy, model = request.policy, request.model
        if model not in (None, AUTO_MODEL):
            self.router.resolve_model(model)  # refuses an unknown model
        if policy is not None and policy != ADAPTIVE:
            from retrieval.errors import UnknownPolicyError
            from retrieval.policies.registry import available_policies

            if policy not in available_policies():
                raise UnknownPolicyError(
                    f"unknown retrieval policy {policy!r}; valid: {', '.join(available_policies())}"
                )
        pinned = policy if policy not in (None, ADAPTIVE) else None
        complexity = None
        if pinned is None and request.embedding is not None:
            complexity = self.router.classify(request.question, request.embedding)
        sla = request.sla or SlaContext()
        return await self.controller.decide(
            tenant=sla.tenant,
            headers=dict(sla.headers),
            complexity=complexity,
            pinned_policy=pinned,
            pinned_model=None if model in (None, AUTO_MODEL) else model,
            top_k=request.top_k or self.config.retrieval.top_k,
            max_tokens=request.max_tokens,
            cacheable=request.cacheable,
            use_response_cache=self.config.cache.enabled,
            dry_run=request.dry_run,
        )

    async def finish(self, ticket: str, outcome: Outcome) -> Settlement | None:
        return None if self.controller is None else await self.controller.finish(ticket, outcome)

    async def reserve_work(self, tenant: str | None, ticket: str, model: str, worst_tokens: int) -> bool:
        """Reserve a tenant's budget for work outside the answer path (`SlaController.reserve_work`)."""
        if self.controller is None:
            return False
        return await self.controller.reserve_work(tenant, ticket, model, worst_tokens)

    async def settle_work(self, ticket: str, model: str, tokens: int) -> None:
        if self.controller is not None:
            await self.controller.settle_work(ticket, model, tokens)

    async def sla(self, tenant: str | None = None) -> dict[str, Any]:
        if self.controller is None:
            return {"enabled": False, "detail": "the SLA controller is off (sla.enabled: false)"}
        return await self.controller.snapshot(tenant)

    def metrics_text(self) -> str:
        if self.controller is None:
            return ""
        from router.sla_metrics import metrics_text

        return metrics_text()

    def ready(self) -> dict[str, Any]:
        return {
            "ready": True,
            "classifier": None if self.router.classifier is None else self.router.classifier.header.get("version"),
            "classifier_error": self.router.classifier_error,
            "quality_table": None if self.router.quality is None else self.router.quality.version,
            "quality_table_error": self.router.quality_error,
            "sla": None
            if self.controller is None
            else {
                "policy_version": self.controller.store.version,
                "latency_priors": None if self.controller.priors is None else self.controller.priors.source,
                "latency_priors_error": self.priors_error,
            },
        }
