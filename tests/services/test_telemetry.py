"""Observability: a multi-step request's trace in an in-memory exporter (every step a span with its
duration and GenAI attributes, on the real model), request ids in log records, and SSE keep-alive
comments while a stream is silent."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.http.app import create_app
from services.http.sse import KEEP_ALIVE, keep_alive
from services.pipeline import Answer, telemetry
from tests.fakes import ScriptedEngine, scripted_config, scripted_service


@pytest.fixture
def spans() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_provider(provider)
    yield exporter
    telemetry.use_provider(None)
    provider.shutdown()


@pytest.mark.integration
@pytest.mark.model
def test_a_multi_step_request_traces_every_step(local_service: Any, spans: Any) -> None:
    with TestClient(create_app(local_service)) as client:
        body = {
            "question": "Which file does make test run, and what does it install first? (trace test)",
            "policy": "multi",
            "max_tokens": 24,
        }
        resp = client.post("/v1/qa", json=body, headers={"X-Request-Id": "multi-step-1"})
    assert resp.status_code == 200, resp.text
    record = Answer.model_validate(resp.json())  # the wire JSON reads back as the record
    finished = spans.get_finished_spans()
    roots = [s for s in finished if s.parent is None]
    assert len(roots) == 1, [s.name for s in finished]
    root = roots[0]
    assert root.name == "chat auto"
    children = [s for s in finished if s is not root]
    assert all(s.parent.span_id == root.context.span_id for s in children)
    assert all(s.context.trace_id == root.context.trace_id for s in finished)
    names = [s.name for s in sorted(children, key=lambda s: s.start_time)]
    assert names[0] == "route" and names[1] == "cache" and names[-2:] == ["cache", "settle"], names
    assert names.count("retrieve") == record.retrieval_steps >= 1
    assert names.count("generate") == record.llm_calls >= 2  # at least one reasoning step and the answer
    for span in finished:
        assert span.end_time > span.start_time, span.name  # each step has its duration
        assert span.attributes["ragyard.request_id"] == "multi-step-1"
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "ragyard"
    assert a["gen_ai.request.model"] == "auto" and a["gen_ai.response.model"] == record.model
    assert a["gen_ai.usage.input_tokens"] == record.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == record.usage.completion_tokens
    assert list(a["gen_ai.response.finish_reasons"]) == [record.finish_reason]
    route = next(s for s in children if s.name == "route").attributes
    assert route["ragyard.plan.policy"] == "multi" and route["ragyard.plan.model"] == record.model
    generations = [s.attributes for s in children if s.name == "generate"]
    assert sum(g["gen_ai.usage.output_tokens"] for g in generations) == record.usage.completion_tokens
    assert all(g["gen_ai.request.model"] == record.model for g in generations)
    retrievals = [s.attributes for s in children if s.name == "retrieve"]
    assert all(r["ragyard.retrieval.results"] > 0 and r["ragyard.retrieval.query"] for r in retrievals)
    lookups = [s.attributes["ragyard.cache.operation"] for s in children if s.name == "cache"]
    assert lookups == ["get", "put"]


@pytest.mark.unit  # the scripted engine and the hashing embedder
def test_keep_alive_comments_fill_a_silent_stream(hashing_embedder: Any, tmp_path: Any) -> None:
    hold = threading.Event()
    config = scripted_config(tmp_path / "index", server={"sse_keepalive_s": 0.05})
    svc = scripted_service(config, hashing_embedder, ScriptedEngine("one two three", hold=hold))
    timer = threading.Timer(0.6, hold.set)
    body = {"model": "auto", "messages": [{"role": "user", "content": "Count."}], "stream": True, "policy": "none"}
    with TestClient(create_app(svc)) as client:
        timer.start()
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            raw = b"".join(resp.iter_bytes())
    timer.cancel()
    assert raw.count(KEEP_ALIVE) >= 3, raw[:400]
    assert raw.endswith(b"data: [DONE]\n\n") and b'"content": " two"' in raw


def test_keep_alive_passes_events_through_in_order() -> None:
    async def source() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(0.12)
        yield b"b"

    async def collect() -> list[bytes]:
        return [item async for item in keep_alive(source(), 0.05)]

    out = asyncio.run(collect())
    assert out[0] == b"a" and out[-1] == b"b" and set(out[1:-1]) == {KEEP_ALIVE} and len(out) >= 3


def test_log_records_carry_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(telemetry.RequestIdFilter())
    log = logging.getLogger("tests.telemetry")
    token = telemetry.REQUEST_ID.set("rid-7")
    try:
        with caplog.at_level(logging.INFO):
            log.info("inside")
    finally:
        telemetry.REQUEST_ID.reset(token)
    with caplog.at_level(logging.INFO):
        log.info("outside")
    assert [getattr(r, "request_id", None) for r in caplog.records] == ["rid-7", "-"]


def test_otlp_export_when_the_endpoint_is_set(tmp_path: Any) -> None:
    """A process with OTEL_EXPORTER_OTLP_ENDPOINT set sends its spans by OTLP/HTTP to that endpoint (a
    loopback collector here, recording what it is sent)."""
    import http.server
    import subprocess
    import sys

    from services.serve.local import free_port

    received: list[tuple[str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    collector = http.server.HTTPServer(("127.0.0.1", port), Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    script = (
        "from opentelemetry import trace\n"
        "from services.pipeline import telemetry\n"
        "assert telemetry.setup_tracing()\n"
        "span = telemetry.start('probe-span', None, **{'gen_ai.operation.name': 'chat'})\n"
        "telemetry.end(span)\n"
        "trace.get_tracer_provider().shutdown()\n"
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": "ragyard-test"}
    try:
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60, cwd=str(Path.cwd()))
    finally:
        collector.shutdown()
        thread.join(timeout=5)
    assert [path for path, _ in received] == ["/v1/traces"]
    body = received[0][1]
    assert b"probe-span" in body and b"ragyard-test" in body and b"gen_ai.operation.name" in body
