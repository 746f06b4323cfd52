"""Start and stop a local Ray with Serve on loopback: used by `ragyard serve`, benches and tests."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import httpx

from services.config import AppConfig
from services.errors import ConfigError

logger = logging.getLogger(__name__)

APP_NAME = "ragyard"


def free_port() -> int:
    """A TCP port free on loopback now (another process may take it before it is bound: callers retry)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_cpus(config: AppConfig) -> float:
    """The logical CPUs the app's replicas reserve; a ConfigError when ``ray.num_cpus`` is set below that
    (Serve would wait for ever to place the last replicas)."""
    from services.serve.app import logical_cpus_needed

    needed = logical_cpus_needed(config)
    if config.ray.num_cpus is not None and config.ray.num_cpus < needed:
        raise ConfigError(
            f"ray.num_cpus {config.ray.num_cpus} cannot place the app: its replicas reserve {needed:g} CPUs "
            f"({len(config.models)} model worker(s) of 1 CPU each, plus the gateway, router and retriever); "
            "raise it or leave it unset"
        )
    return needed


# Ray puts Unix sockets at <temp>/session_<date>_<time>_<pid>/sockets/plasma_store (60 bytes more than the
# temp dir), and a socket path may have 107 bytes.
RAY_TEMP_MAX = 47


def ray_temp_dir(configured: str | Path, max_len: int = RAY_TEMP_MAX) -> Path:
    """``configured`` resolved; when that is longer than ``max_len`` (a clone at a deep path would overflow Ray's
    socket paths), a short directory of its own under the system temp dir, named by a hash of the configured
    one, so two checkouts never share one and one checkout always gets the same."""
    import hashlib
    import tempfile

    temp = Path(configured).resolve()
    if len(str(temp)) <= max_len:
        return temp
    short = Path(tempfile.gettempdir()) / f"ragyard-ray-{hashlib.sha256(str(temp).encode()).hexdigest()[:10]}"
    if len(str(short)) > max_len:
        short = Path("/tmp") / short.name
    return short


def start_ray(config: AppConfig) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ray.is_initialized():
        return
    if config.ray.address:
        ray.init(address=config.ray.address, logging_level=logging.WARNING)
        return
    temp = ray_temp_dir(config.ray.temp_dir)
    temp.mkdir(parents=True, exist_ok=True)
    needed = local_cpus(config)

    # A local Ray gets at least the logical CPUs the app reserves: with the default ladder (two model workers
    # of one CPU each, plus the gateway, router and retriever) a 2-core host would otherwise never place the
    # second worker. Ray's CPUs are a scheduling budget; the workers' torch threads use every core regardless.
    ray.init(
        num_cpus=config.ray.num_cpus or max(2, os.cpu_count() or 2, math.ceil(needed)),
        include_dashboard=False,
        _temp_dir=str(temp),
        object_store_memory=256 * 1024 * 1024,
        logging_level=logging.WARNING,
        runtime_env={
            "env_vars": {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        },
    )


def start(config: AppConfig, *, wait_ready_s: float = 600.0) -> str:
    """Deploy the app on a local Ray (or ``ray.address``); return its base URL once /readyz is ready."""
    from ray import serve

    from services.serve.app import build_app

    start_ray(config)
    host, port = config.server.host, config.server.port
    serve.start(http_options={"host": host, "port": port}, detached=False)
    serve.run(build_app(config.model_dump(mode="json")), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    wait_ready(url, wait_ready_s)
    return url


def wait_ready(url: str, timeout_s: float, *, api_key: str | None = None) -> dict[str, Any]:
    """Poll /readyz until it answers 200; its details need an operator ``api_key`` once keys are set."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{url}/readyz", headers=headers, timeout=10.0)
            if resp.status_code == 200:
                return resp.json()
            last = resp.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready after {timeout_s:.0f}s: {last}")


def stop() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
