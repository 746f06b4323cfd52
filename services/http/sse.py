"""The chat completion stream in OpenAI's server-sent events: a role delta, text deltas, a last chunk
with the finish reason and Ragyard's record, the usage chunk when asked for, then ``[DONE]``. The 200
is sent before generation starts, so a failure after it goes into the stream as an error event."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from retrieval.generation import SamplingParams
from router.plan import RouteDecision
from services.http.errors import error_body, to_ragyard
from services.rag import AnswerRequest, RagService

logger = logging.getLogger(__name__)

EXTENSION_KEYS = ("citations", "plan", "timings", "retrieval_steps", "cache", "sla")


def extension(record: dict[str, Any]) -> dict[str, Any]:
    """The part of Ragyard's record a chat completion carries under ``ragyard``."""
    return {k: record[k] for k in EXTENSION_KEYS if k in record}


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def chat_events(
    service: RagService,
    req: AnswerRequest,
    decided: tuple[RouteDecision, SamplingParams],
    cid: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    model = decided[0].plan.model
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        out = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        if include_usage:
            out["usage"] = None
        return out

    yield _event(chunk({"role": "assistant", "content": ""}))
    try:
        async for ev in service.stream(req, decided):
            if not ev.done:
                yield _event(chunk({"content": ev.text}))
                continue
            record = ev.record
            yield _event(chunk({}, record["finish_reason"], ragyard=extension(record)))
            if include_usage:
                yield _event({**head, "choices": [], "usage": record["usage"]})
    except Exception as exc:  # noqa: BLE001 - the status is sent; the error goes in the stream
        err = to_ragyard(exc)
        if err.status_code >= 500:
            logger.exception("stream failed", exc_info=exc)
        yield _event(error_body(err.message, err.error_type, err.param, err.code))
    yield b"data: [DONE]\n\n"
