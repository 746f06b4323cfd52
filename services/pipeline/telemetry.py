"""Traces and request ids: OpenTelemetry spans for each request and each step of its plan, with the
OpenTelemetry GenAI semantic-convention attributes (``gen_ai.*``), and the request id that ties a
request's logs, spans and engine calls together.

Spans go to the global tracer provider unless `use_provider` names another (the tests do: an in-memory
exporter). `setup_tracing` installs an OTLP exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, the
variables of the OpenTelemetry SDK (``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_PROTOCOL``, headers...)
applying as usual; without it the API's no-op provider makes every span free.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from services.pipeline.records import Answer, AnswerRequest, Completion

if TYPE_CHECKING:
    from retrieval.generation import GenerationChunk, SamplingParams
    from retrieval.policies.base import PolicyContext
    from router.plan import RouteDecision

logger = logging.getLogger(__name__)

# The request id of the request this task serves (the edge sets it; log records and spans read it).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("ragyard_request_id", default=None)

# A span's attributes as the pipeline builds them: None values are left off the span.
Attributes = dict[str, AttributeValue | None]

PROVIDER_NAME = "ragyard"  # gen_ai.provider.name: the service that answers, whatever engine runs inside

_provider: Any = None
_setup_lock = threading.Lock()
_setup_done = False


def use_provider(provider: Any) -> None:
    """Send Ragyard's spans to ``provider`` (None: back to the global one)."""
    global _provider
    _provider = provider


def tracer() -> Tracer:
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    return provider.get_tracer("ragyard")


def setup_tracing() -> bool:
    """Install a batching OTLP exporter as the global provider when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its
    traces-only variant) is set; once per process. True when it did."""
    global _setup_done
    with _setup_lock:
        if _setup_done:
            return False
        _setup_done = True
        if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            return False
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "ragyard")})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        logger.info("exporting traces by OTLP to %s", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        return True


def start(name: str, parent: Span | None = None, **attributes: Any) -> Span:
    """A span under ``parent`` (None: a root, or the current span). Ended by the caller: spans here cross
    awaits and async generators, where a context manager's attach/detach would straddle tasks."""
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer().start_span(name, context=context)
    set_attributes(span, attributes)
    rid = REQUEST_ID.get()
    if rid is not None:
        span.set_attribute("ragyard.request_id", rid)
    return span


def set_attributes(span: Span, attributes: Attributes) -> None:
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, tuple):
            value = list(value)
        span.set_attribute(key, value)


def end(span: Span, error: BaseException | None = None) -> None:
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500]))
        span.set_attribute("error.type", type(error).__name__)
    span.end()


@contextlib.contextmanager
def span(name: str, parent: Span | None = None, **attributes: Any) -> Iterator[Span]:
    """`start` and `end` around a block: the span ends with the block, marked failed if it raised. Nothing is
    attached to the context (as `start`), so the block may await; it must not yield from an async generator."""
    current = start(name, parent, **attributes)
    try:
        yield current
    except BaseException as exc:
        end(current, exc)
        raise
    end(current)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current request's, or "-") to every record, for formats that show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


# -- the answer pipeline's spans --------------------------------------------------------------------
def request_attributes(req: AnswerRequest, operation: str) -> Attributes:
    return {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER_NAME,
        "gen_ai.request.model": req.model or "auto",
        "gen_ai.request.max_tokens": req.max_tokens,
        "gen_ai.request.temperature": req.temperature,
        "gen_ai.request.top_p": req.top_p,
        "gen_ai.request.seed": req.seed,
        "gen_ai.request.stop_sequences": list(req.stop) or None,
        "gen_ai.request.frequency_penalty": req.frequency_penalty or None,
        "gen_ai.request.presence_penalty": req.presence_penalty or None,
        "gen_ai.output.type": "json" if req.response_format is not None else "text",
        "ragyard.request.policy": req.policy,
        "ragyard.tenant": req.sla.tenant if req.sla is not None else None,
    }


def response_attributes(record: Answer | Completion) -> Attributes:
    answer = record if isinstance(record, Answer) else None
    return {
        "gen_ai.response.id": record.id,
        "gen_ai.response.model": record.model,
        "gen_ai.response.finish_reasons": [record.finish_reason] if record.finish_reason else None,
        "gen_ai.usage.input_tokens": record.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": record.usage.completion_tokens,
        "ragyard.plan.policy": record.plan.policy,
        "ragyard.retrieval_steps": answer.retrieval_steps if answer else None,
        "ragyard.llm_calls": answer.llm_calls if answer else None,
        "ragyard.citations": len(answer.citations) if answer else None,
        "ragyard.cache.response": record.cache.response,
    }


def plan_attributes(decision: RouteDecision) -> Attributes:
    plan = decision.plan
    sla = decision.sla
    return {
        "ragyard.plan.policy": plan.policy,
        "ragyard.plan.model": plan.model,
        "ragyard.plan.top_k": plan.top_k,
        "ragyard.plan.max_tokens": plan.max_tokens,
        "ragyard.plan.speculative": plan.speculative,
        "ragyard.plan.chunk_cache": plan.chunk_cache,
        "ragyard.plan.reason": str(decision.reason)[:500] if decision.reason else None,
        "ragyard.plan.complexity": plan.complexity.cls if plan.complexity is not None else None,
        "ragyard.plan.adaptive_policy": plan.complexity.policy if plan.complexity is not None else None,
        "ragyard.sla.tier": sla.tier if sla is not None else None,
        "ragyard.sla.ticket": sla.ticket if sla is not None else None,
    }


def generation_attributes(model: str, params: SamplingParams, stats: Any, finish: str | None) -> Attributes:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME,
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.request.max_tokens": params.max_tokens,
        "gen_ai.request.temperature": params.temperature,
        "gen_ai.response.finish_reasons": [finish] if finish else None,
        "gen_ai.usage.input_tokens": getattr(stats, "prompt_tokens", None),
        "gen_ai.usage.output_tokens": getattr(stats, "completion_tokens", None),
        "ragyard.ttft_s": getattr(stats, "ttft_s", None),
        "ragyard.speculative.accepted": (getattr(stats, "speculative", None) or {}).get("accepted"),
        "ragyard.speculative.drafted": (getattr(stats, "speculative", None) or {}).get("drafted"),
        "ragyard.prefix_cached_tokens": getattr(stats, "cached_prompt_tokens", None),
    }


def traced_context(ctx: PolicyContext, parent: Span, model: str) -> PolicyContext:
    """``ctx`` with a span around each retrieval and each model call a policy makes."""
    from dataclasses import replace

    retrieve, generate, stream, signals = ctx.retrieve, ctx.generate, ctx.stream, ctx.generate_with_signals

    async def traced_retrieve(query: str, k: int) -> Any:
        attributes = {"ragyard.retrieval.query": query[:500], "ragyard.retrieval.top_k": k}
        with span("retrieve", parent, **attributes) as current:
            found = await retrieve(query, k)
            current.set_attribute("ragyard.retrieval.results", len(found))
            if found:
                current.set_attribute("ragyard.retrieval.top_score", round(float(found[0].score), 4))
        return found

    async def traced_generate(messages: Any, params: SamplingParams, *args: Any) -> Any:
        return await _traced_call(generate, parent, model, {}, messages, params, *args)

    async def traced_stream(messages: Any, params: SamplingParams, *args: Any) -> AsyncIterator[Any]:
        async for chunk in trace_stream(stream(messages, params, *args), parent, model, params):
            yield chunk

    async def traced_signals(messages: Any, params: SamplingParams, *args: Any) -> Any:
        assert signals is not None
        return await _traced_call(signals, parent, model, {"ragyard.signals": True}, messages, params, *args)

    escalation = ctx.escalation
    if escalation is not None:
        strong = escalation.model
        up_generate, up_stream = escalation.generate, escalation.stream

        async def traced_up_generate(messages: Any, params: SamplingParams, *args: Any) -> Any:
            return await _traced_call(up_generate, parent, strong, {"ragyard.cascade": True}, messages, params, *args)

        async def traced_up_stream(messages: Any, params: SamplingParams, *args: Any) -> AsyncIterator[Any]:
            async for chunk in trace_stream(up_stream(messages, params, *args), parent, strong, params):
                yield chunk

        escalation = replace(escalation, generate=traced_up_generate, stream=traced_up_stream)
    return replace(
        ctx,
        escalation=escalation,
        retrieve=traced_retrieve,
        generate=traced_generate,
        stream=traced_stream,
        generate_with_signals=traced_signals if signals is not None else None,
    )


async def _traced_call(
    fn: Any, parent: Span, model: str, extra: Attributes, messages: Any, params: SamplingParams, *args: Any
) -> Any:
    """One model call (generate, or generate with signals) inside a ``generate`` span."""
    with span("generate", parent, **extra) as current:
        result = await fn(messages, params, *args)
        set_attributes(current, generation_attributes(model, params, result.stats, result.finish_reason))
    return result


async def trace_stream(
    chunks: AsyncIterator[GenerationChunk], parent: Span, model: str, params: SamplingParams
) -> AsyncIterator[GenerationChunk]:
    """A streamed model call inside a ``generate`` span (ended with the stream, or when it breaks off)."""
    span = start("generate", parent, **{"ragyard.streamed": True})
    stats: Any = None
    finish: str | None = None
    error: BaseException | None = None
    try:
        async for chunk in chunks:
            if chunk.stats is not None:
                stats = chunk.stats
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
            yield chunk
    except BaseException as exc:
        error = exc
        raise
    finally:
        set_attributes(span, generation_attributes(model, params, stats, finish))
        end(span, error)
