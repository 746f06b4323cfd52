"""The router as a service: picks each question's plan. A plain class; Serve wraps it as the
`router` deployment, and the gateway asks it through a handle (or directly on the library path)."""

from __future__ import annotations

from typing import Any

from router.plan import RouteDecision
from router.router import ConfigRouter
from services.config import AppConfig, load_config

# all-MiniLM-L6-v2, the embedder the retriever runs; the classifier is checked against it at load.
EMBEDDING_DIM = 384


class RouterService:
    def __init__(self, config: AppConfig | dict[str, Any] | str, *, embedding_dim: int = EMBEDDING_DIM) -> None:
        self.config = load_config(config)
        self.router = ConfigRouter(self.config, embedding_dim=embedding_dim)

    def needs_embedding(self, policy: str | None) -> bool:
        return self.router.needs_embedding(policy)

    async def route(self, question: str, **choices: Any) -> RouteDecision:
        return self.router.route(question, **choices)

    def ready(self) -> dict[str, Any]:
        return {
            "ready": True,
            "classifier": None if self.router.classifier is None else self.router.classifier.header.get("version"),
            "classifier_error": self.router.classifier_error,
        }
