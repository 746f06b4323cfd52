"""Ragyard's own question routes: `/v1/qa` (the answer with its whole record), `/v1/plan` (the plan
without the answer) and `/v1/sla` (budgets and load)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from retrieval.policies.base import Question
from services.http.auth import principal
from services.http.deps import Service, min_generation, sla_context
from services.http.schemas import QARequest
from services.pipeline.records import AnswerRequest

router = APIRouter()


def qa_request(body: QARequest, request: Request) -> AnswerRequest:
    return AnswerRequest(
        question=Question(text=body.question, style=body.style),
        model=body.model,
        policy=body.policy,
        top_k=body.top_k,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        sla=sla_context(request),
        namespaces=principal(request).readable,
        min_generation=min_generation(request),
        request_id=getattr(request.state, "request_id", None),
    )


@router.post("/v1/qa")
async def qa(body: QARequest, request: Request, svc: Service) -> dict[str, Any]:
    req = qa_request(body, request)
    request.state.ran = req.ran  # what the rate limiter counts against TPM
    return (await svc.answer(req)).wire()


@router.post("/v1/plan")
async def plan(body: QARequest, request: Request, svc: Service) -> dict[str, Any]:
    # What /v1/qa would run for the same body and headers, without generating (like EXPLAIN).
    return await svc.plan(qa_request(body, request))


@router.get("/v1/policies")
async def policies() -> dict[str, Any]:
    """The retrieval policies a request may name (the registry's, plug-ins included)."""
    from retrieval.policies.registry import available_policies

    return {"object": "list", "data": [{"id": name, "object": "policy"} for name in available_policies()]}


@router.get("/v1/sla")
async def sla(request: Request, svc: Service) -> dict[str, Any]:
    # A tenant sees its own budget; an operator key (server.api_keys) or an open server sees all.
    return {"object": "sla.status", **await svc.sla(getattr(request.state, "tenant", None))}
