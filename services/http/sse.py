"""The chat completion stream in OpenAI's server-sent events: a role delta, text deltas, a last chunk
with the finish reason and Ragyard's record, the usage chunk when asked for, then ``[DONE]``. The 200
is sent before generation starts, so a failure after it goes into the stream as an error event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from retrieval.generation import SamplingParams
from router.plan import RouteDecision
from services.http.errors import error_body, to_ragyard
from services.pipeline.records import AnswerRequest
from services.pipeline.service import RagService

logger = logging.getLogger(__name__)

KEEP_ALIVE = b": keep-alive\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


_event = event


async def keep_alive(source: AsyncIterator[bytes], interval_s: float) -> AsyncIterator[bytes]:
    """``source``'s events, with an SSE comment whenever it stays silent ``interval_s``: a multi-step plan
    can think for many seconds before its first token, and proxies drop idle connections (clients
    ignore comment lines). Hand-written: sse-starlette's ping does this, but it would replace the
    StreamingResponse that the stream's error handling and the tests rely on, for a dozen lines."""
    it = aiter(source)
    pending: asyncio.Future[bytes] = asyncio.ensure_future(anext(it))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield KEEP_ALIVE
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            yield item
            pending = asyncio.ensure_future(anext(it))
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


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

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        out = {**head, "choices": [choice], **extra}
        if include_usage:
            out["usage"] = None
        return out

    yield _event(chunk({"role": "assistant", "content": ""}))
    try:
        async for ev in service.stream(req, decided):
            record = ev.record
            if record is None:
                tokens = {"content": [t.openai() for t in ev.logprobs]} if ev.logprobs is not None else None
                yield _event(chunk({"content": ev.text}, logprobs=tokens))
                continue
            yield _event(chunk({}, record.finish_reason, ragyard=record.extension()))
            if include_usage:
                yield _event({**head, "choices": [], "usage": record.usage.model_dump()})
    except Exception as exc:  # noqa: BLE001 - the status is sent; the error goes in the stream
        yield stream_error(exc)
    yield b"data: [DONE]\n\n"


def stream_error(exc: Exception) -> bytes:
    """The error event of a stream whose 200 is out (a 5xx is logged with its traceback)."""
    err = to_ragyard(exc)
    if err.status_code >= 500:
        logger.exception("stream failed", exc_info=exc)
    return event(error_body(err.message, err.error_type, err.param, err.code))
