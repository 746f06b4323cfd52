"""Metrics of the gateway (requests, plans, stages, tokens): Prometheus families that a Serve replica also
exports through Ray (core/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from core.metrics import counter, histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)

HTTP_REQUESTS = counter(
    "ragyard_http_requests_total", "HTTP requests by route, method and status.", ["route", "method", "status"]
)
HTTP_LATENCY = histogram(
    "ragyard_http_request_seconds", "HTTP request latency by route.", ["route"], buckets=_LATENCY_BUCKETS
)
PLAN_REQUESTS = counter(
    "ragyard_plan_requests_total",
    "Questions answered by retrieval policy, model and cache result.",
    ["policy", "model", "cache"],
)
PLAN_LATENCY = histogram(
    "ragyard_plan_seconds",
    "End-to-end answer latency by policy and model.",
    ["policy", "model"],
    buckets=_LATENCY_BUCKETS,
)
STAGE_LATENCY = histogram(
    "ragyard_stage_seconds", "Time per stage (retrieve, prefill, decode).", ["stage"], buckets=_LATENCY_BUCKETS
)
TTFT = histogram("ragyard_ttft_seconds", "Time to first token by model.", ["model"], buckets=_LATENCY_BUCKETS)
TOKENS = counter("ragyard_tokens_total", "Tokens by model and kind (prompt, completion).", ["model", "kind"])
CASCADE = counter(
    "ragyard_cascade_total",
    "Confidence-cascade first answers by the model that gave them, whether the next model answered again, and "
    "the question's complexity class (none without a classifier).",
    ["model", "escalated", "class"],
)


def merge_exposition(texts: Iterable[str]) -> bytes:
    """One valid exposition of the families in several texts (workers' vLLM metrics).

    Families of the same name (each worker's ``vllm:...`` with its own ``model_name`` label) are
    merged, so every family has one HELP and one TYPE line, as Prometheus requires.
    """
    merged: dict[str, Any] = {}
    for text in texts:
        if not text:
            continue
        for family in text_string_to_metric_families(text):
            seen = merged.get(family.name)
            if seen is None:
                merged[family.name] = family
            else:
                seen.samples.extend(family.samples)
    return exposition(list(merged.values())) if merged else b""


def exposition(families: list[Any]) -> bytes:
    """Prometheus text of metric families that live outside any registry."""
    from prometheus_client import generate_latest

    class _Families:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    return generate_latest(registry)
