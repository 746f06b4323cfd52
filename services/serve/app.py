"""The Ray Serve application: deployments wrapping the plain classes, bound into one graph.

``build_app`` is the Serve ``import_path`` (``services.serve.app:build_app``); its ``args`` are the app
config (inline sections, and/or ``config_path`` naming a YAML file).
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.schema import LoggingConfig

from services.config import AppConfig, load_config

logger = logging.getLogger(__name__)


class GatewayDeployment:
    """The HTTP ingress. Its FastAPI app is built on the replica, over handles to the other deployments."""

    def __init__(self, config: dict[str, Any], router: Any, retriever: Any, workers: dict[str, Any]) -> None:
        from services.pipeline.clients import WorkerClient
        from services.pipeline.service import RagService, build_cache
        from services.serve.handles import remote_retriever, remote_router, remote_worker

        self.config = load_config(config)
        clients: dict[str, WorkerClient] = {mid: remote_worker(h) for mid, h in workers.items()}
        self.service = RagService(
            self.config,
            remote_retriever(retriever),
            clients,
            router=remote_router(router),
            cache=build_cache(self.config),
        )

    def __serve_build_asgi_app__(self) -> Any:
        from services.http.app import create_app_for

        return create_app_for(self.service, behind_serve=True)


def _config_from_args(args: dict[str, Any] | None) -> AppConfig:
    args = dict(args or {})
    path = args.pop("config_path", None)
    if path is not None:
        base = load_config(path).model_dump(mode="json")
        for section, value in args.items():
            if isinstance(value, dict) and isinstance(base.get(section), dict):
                base[section] = {**base[section], **value}
            else:
                base[section] = value
        return load_config(base)
    return load_config(args)


def deployment_name(model_id: str) -> str:
    return "worker-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in model_id)


# Logical CPUs each deployment reserves (Ray's scheduling, not a thread count: a worker's torch still uses
# every core of its host).
RETRIEVER_CPUS, ROUTER_CPUS, WORKER_CPUS, GATEWAY_CPUS = 0.25, 0.1, 1.0, 0.25


def logical_cpus_needed(config: AppConfig) -> float:
    """What the app's replicas reserve together, so a local Ray can be sized to place all of them."""
    r = config.ray
    workers = WORKER_CPUS * r.worker_replicas * len(config.models)
    return (
        RETRIEVER_CPUS * r.retriever_replicas
        + ROUTER_CPUS * r.router_replicas
        + workers
        + GATEWAY_CPUS * r.gateway_replicas
    )


def build_app(args: dict[str, Any] | None = None) -> Application:
    from services.deployments.retriever import RetrieverService
    from services.deployments.router import RouterService
    from services.deployments.worker import Worker

    config = _config_from_args(args)
    plain = config.model_dump(mode="json")
    ray_cfg = config.ray
    # Every deployment: a bounded queue (BackPressureError, a 503 at the edge, rather than an unbounded
    # wait) and Serve's health checks, which call the class's `check_health` and replace a failing replica.
    common: dict[str, Any] = {
        "max_queued_requests": ray_cfg.max_queued_requests,
        "health_check_period_s": ray_cfg.health_check_period_s,
        "health_check_timeout_s": ray_cfg.health_check_timeout_s,
        # JSON lines carry Serve's request id (the caller's X-Request-Id, or the proxy's) on every record.
        "logging_config": LoggingConfig(encoding="JSON" if config.server.log_format == "json" else "TEXT"),
    }
    retriever = serve.deployment(
        name="retriever",
        num_replicas=ray_cfg.retriever_replicas,
        ray_actor_options={"num_cpus": RETRIEVER_CPUS},
        max_ongoing_requests=64,
        **common,
    )(RetrieverService).bind(plain)
    router = serve.deployment(
        name="router",
        num_replicas=ray_cfg.router_replicas,
        ray_actor_options={"num_cpus": ROUTER_CPUS},
        max_ongoing_requests=256,
        **common,
    )(RouterService).bind(plain)
    routing: dict[str, Any] = {}
    if ray_cfg.worker_routing == "affinity":
        from ray.serve.config import RequestRouterConfig

        options: dict[str, Any] = {
            "request_router_class": "services.deployments.affinity:ChunkAffinityRouter",
            # Queue lengths come from the replicas' own reports this often (the load guard reads them).
            "request_routing_stats_period_s": 2.0,
        }
        routing["request_router_config"] = RequestRouterConfig(**options)
    workers = {
        m.id: serve.deployment(
            name=deployment_name(m.id),
            num_replicas=ray_cfg.worker_replicas,
            ray_actor_options={"num_cpus": WORKER_CPUS, **({"num_gpus": 1} if m.device.startswith("cuda") else {})},
            # Concurrent streams interleave token by token inside one replica.
            max_ongoing_requests=32,
            **routing,
            **common,
        )(Worker).bind(plain, m.id)
        for m in config.models
    }
    gateway = serve.deployment(
        name="gateway",
        num_replicas=ray_cfg.gateway_replicas,
        ray_actor_options={"num_cpus": GATEWAY_CPUS},
        max_ongoing_requests=256,
        **common,
    )(serve.ingress()(GatewayDeployment))
    return gateway.bind(plain, router, retriever, workers)
