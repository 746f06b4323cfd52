"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services import metrics
from services.http.deps import Service

logger = logging.getLogger(__name__)
router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(svc: Service) -> JSONResponse:
    try:
        detail = await svc.readiness()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", and says why
        logger.info("not ready: %s", exc)
        return JSONResponse({"status": "not ready", "reason": str(exc) or type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ready", **detail})


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
