"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services import metrics
from services.http.auth import principal
from services.http.deps import Service

logger = logging.getLogger(__name__)
router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, svc: Service) -> JSONResponse:
    # The status is for every prober (a kubelet sends no key); the components' details (index size,
    # artifacts, models, cache figures) only for an operator once keys are configured.
    details = principal(request).operator
    try:
        detail = await svc.readiness()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", and says why
        logger.info("not ready: %s", exc)
        reason = {"reason": str(exc) or type(exc).__name__} if details else {}
        return JSONResponse({"status": "not ready", **reason}, status_code=503)
    return JSONResponse({"status": "ready", **(detail if details else {})})


@router.get("/metrics")
async def prometheus(svc: Service) -> Response:
    body = generate_latest()
    texts = []
    try:
        # Engines in other processes (Serve replicas running vLLM) report through their workers.
        texts += await svc.worker_metrics()
    except Exception as exc:  # noqa: BLE001 - the gateway's own metrics are still worth serving
        logger.warning("worker metrics unavailable: %s", exc)
    try:
        # The SLA controller lives in the router (its own replica on Serve).
        texts.append(await svc.router_metrics())
    except Exception as exc:  # noqa: BLE001 - as above
        logger.warning("router metrics unavailable: %s", exc)
    body += metrics.merge_exposition(texts)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
