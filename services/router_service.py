"""The router as a service: picks each question's plan. A plain class; Serve wraps it as the
`router` deployment, and the gateway asks it through a handle (or directly on the library path)."""

from __future__ import annotations

from typing import Any

from router.plan import RouteDecision
from router.router import ConfigRouter
from services.config import AppConfig, load_config


class RouterService:
    def __init__(self, config: AppConfig | dict[str, Any] | str) -> None:
        self.config = load_config(config)
        self.router = ConfigRouter(self.config)

    async def route(self, question: str, **choices: Any) -> RouteDecision:
        return self.router.route(question, **choices)

    def ready(self) -> dict[str, Any]:
        return {"ready": True, "router": type(self.router).__name__}
