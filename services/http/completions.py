"""The rest of the OpenAI-compatible surface that vLLM's server has: ``/v1/completions`` (a raw prompt,
continued by a model, no retrieval), ``/tokenize`` and ``/detokenize`` (vLLM's own routes, same shapes)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from retrieval.generation import ChatMessage
from retrieval.policies.base import Question
from router.errors import UnknownModelError
from router.routing import AUTO_MODEL
from services.deployments.worker import Detokenized, Tokens
from services.http.deps import Service, sla_context
from services.http.openai import sampling_of
from services.http.schemas import CompletionRequest, DetokenizeRequest, TokenizeRequest
from services.http.sse import event, keep_alive, stream_error
from services.pipeline.completions import complete
from services.pipeline.records import AnswerRequest, Completion, StreamEvent
from services.pipeline.service import RagService

router = APIRouter()


def legacy_logprobs(tokens: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    """The completions API's logprobs shape (parallel lists) from the chat shape's list of tokens."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t["token"])
    return {
        "tokens": [t["token"] for t in tokens],
        "token_logprobs": [t["logprob"] for t in tokens],
        "top_logprobs": [{a["token"]: a["logprob"] for a in t["top_logprobs"]} for t in tokens],
        "text_offset": offsets,
    }


def completion_request(body: CompletionRequest, request: Request) -> AnswerRequest:
    req = AnswerRequest(
        question=Question(text=body.text()),
        model=body.model,
        policy="none",  # the prompt is the model's whole input: nothing is retrieved
        max_tokens=body.max_tokens,
        logprobs=body.logprobs,
        request_id=getattr(request.state, "request_id", None),
        **sampling_of(body),
    )
    req.sla = sla_context(request)
    request.state.ran = req.ran
    return req


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, svc: Service) -> JSONResponse | StreamingResponse:
    req = completion_request(body, request)
    created = int(time.time())
    decided = await svc.decide(req)
    prompt = body.text()
    if not body.stream:
        record: Completion | None = None
        async for ev in complete(svc, req, prompt, decided):
            if ev.record is not None:
                record = ev.record
        assert record is not None, "a completion ends with its record"
        return JSONResponse(
            {
                "id": record.id,
                "object": "text_completion",
                "created": created,
                "model": record.model,
                "choices": [
                    {
                        "index": 0,
                        "text": record.text,
                        "finish_reason": record.finish_reason,
                        "logprobs": legacy_logprobs(record.logprobs) if record.logprobs is not None else None,
                    }
                ],
                "usage": record.usage.model_dump(),
                "ragyard": record.extension(),
            }
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = completion_events(complete(svc, req, prompt, decided), decided[0].plan.model, created, include_usage)
    return StreamingResponse(
        keep_alive(events, svc.config.server.sse_keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def completion_events(
    source: AsyncIterator[StreamEvent[Completion]], model: str, created: int, include_usage: bool
) -> AsyncIterator[bytes]:
    cid = ""
    offset = 0
    head: dict[str, Any] = {"object": "text_completion", "created": created, "model": model}
    try:
        async for ev in source:
            record = ev.record
            if record is not None:
                cid = record.id
                yield event(
                    {
                        **head,
                        "id": cid,
                        "choices": [{"index": 0, "text": "", "finish_reason": record.finish_reason, "logprobs": None}],
                    }
                )
                if include_usage:
                    yield event({**head, "id": cid, "choices": [], "usage": record.usage.model_dump()})
                continue
            logprobs = None
            if ev.logprobs is not None:
                logprobs = legacy_logprobs([t.openai() for t in ev.logprobs], offset)
            offset += len(ev.text)
            yield event(
                {
                    **head,
                    "id": cid,
                    "choices": [{"index": 0, "text": ev.text, "finish_reason": None, "logprobs": logprobs}],
                }
            )
    except Exception as exc:  # noqa: BLE001 - the status is sent; the error goes in the stream
        yield stream_error(exc)
    yield b"data: [DONE]\n\n"


def _model(svc: RagService, model: str) -> str:
    """The worker a tokenizer route asks: a configured model, or for 'auto' the first one."""
    if model == AUTO_MODEL:
        return svc.config.default_model.id
    if model not in {m.id for m in svc.config.models}:
        raise UnknownModelError(f"unknown model {model!r}; valid: {', '.join(m.id for m in svc.config.models)}")
    return model


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, svc: Service) -> Tokens:
    model = _model(svc, body.model)
    text: str | list[ChatMessage]
    if body.messages is not None:
        text = [
            ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text()) for m in body.messages
        ]
    else:
        text = body.prompt or ""
    out = await svc.worker_for(model).tokenize(text, body.add_special_tokens)
    if not body.return_token_strs:
        out.pop("token_strs", None)
    return out


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, svc: Service) -> Detokenized:
    return await svc.worker_for(_model(svc, body.model)).detokenize(body.tokens)
