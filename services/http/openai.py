"""OpenAI's surface: `/v1/models` and `/v1/chat/completions` (plain and streamed)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from retrieval.generation import ChatMessage
from retrieval.policies.base import Question
from router.routing import AUTO_MODEL
from services.http.auth import principal
from services.http.deps import Service, min_generation, sla_context
from services.http.schema_budget import check_schema
from services.http.schemas import ChatCompletionRequest, CompletionRequest
from services.http.sse import chat_events, keep_alive
from services.pipeline.records import AnswerRequest

router = APIRouter()


@router.get("/v1/models")
async def models(svc: Service) -> dict[str, Any]:
    created = int(time.time())
    data = [
        {
            "id": AUTO_MODEL,
            "object": "model",
            "created": created,
            "owned_by": "ragyard",
            "description": "the router picks the model and the retrieval policy",
        }
    ]
    data += [{"id": m.id, "object": "model", "created": created, "owned_by": "ragyard"} for m in svc.config.models]
    data.append(
        {
            "id": svc.config.embedder.id,
            "object": "model",
            "created": created,
            "owned_by": "ragyard",
            "description": "the retriever's embedder (/v1/embeddings)",
        }
    )
    return {"object": "list", "data": data}


def chat_to_answer(body: ChatCompletionRequest) -> AnswerRequest:
    """The question is the last message; earlier user and assistant turns are its history; system and
    developer messages join into one system prompt."""
    systems = [m.text() for m in body.messages if m.role in ("system", "developer") and m.text().strip()]
    history = [
        ChatMessage(role=m.role, content=m.text()) for m in body.messages[:-1] if m.role in ("user", "assistant")
    ]
    question = Question(
        text=body.messages[-1].text().strip(),
        history=history,
        system="\n".join(systems) or None,
        style=body.style,
    )
    return AnswerRequest(
        question=question,
        model=body.model,
        policy=body.policy,
        top_k=body.top_k,
        max_tokens=body.requested_max_tokens(),
        logprobs=body.logprobs_asked(),
        response_format=body.response_format.constraint() if body.response_format else None,
        **sampling_of(body),
    )


def sampling_of(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The sampling fields chat and completions share, as AnswerRequest takes them."""
    return {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stop_list(),
        "seed": body.seed,
        "frequency_penalty": body.frequency_penalty or 0.0,
        "presence_penalty": body.presence_penalty or 0.0,
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatCompletionRequest, request: Request, svc: Service) -> JSONResponse | StreamingResponse:
    req = chat_to_answer(body)
    fmt = req.response_format
    if fmt is not None and fmt.json_schema is not None:
        # Before any engine compiles it: a schema over its work budget never reaches a worker, and the engines
        # get it with its references followed.
        schema = await check_schema(fmt.json_schema, svc.config.server.response_format)
        req.response_format = fmt.model_copy(update={"json_schema": schema})
    req.sla = sla_context(request)
    req.request_id = getattr(request.state, "request_id", None)
    req.namespaces = principal(request).readable
    req.min_generation = min_generation(request)
    request.state.ran = req.ran  # what the rate limiter counts against TPM
    created = int(time.time())
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    if not body.stream:
        record = await svc.answer(req)
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": record.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": record.answer},
                        "finish_reason": record.finish_reason,
                        "logprobs": {"content": record.logprobs} if record.logprobs is not None else None,
                    }
                ],
                "usage": record.usage.model_dump(),
                "ragyard": record.extension(),
            }
        )
    # Plan (and fail on a bad model or limit) before the 200 and the first byte go out.
    decided = await svc.decide(req)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        keep_alive(chat_events(svc, req, decided, cid, created, include_usage), svc.config.server.sse_keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
