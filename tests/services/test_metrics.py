"""Merging workers' Prometheus texts for the gateway's /metrics."""

from __future__ import annotations

import pytest


@pytest.mark.unit
def test_worker_metrics_merge_into_one_valid_exposition() -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from services.metrics import merge_exposition

    def worker(model: str, tokens: float) -> str:
        """What one worker process exposes (vLLM registers families like these)."""
        registry = CollectorRegistry()
        Counter("vllm:prompt_tokens", "Prompt tokens.", ["model_name"], registry=registry).labels(model).inc(tokens)
        ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT.", ["model_name"], registry=registry)
        ttft.labels(model).observe(0.3)
        return generate_latest(registry).decode()

    text = merge_exposition([worker("a", 3), "", worker("b", 5)]).decode()
    assert text.count("# TYPE vllm:time_to_first_token_seconds histogram") == 1
    assert text.count("# TYPE vllm:prompt_tokens_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    tokens = {
        s.labels["model_name"]: s.value for s in families["vllm:prompt_tokens"].samples if s.name.endswith("_total")
    }
    assert tokens == {"a": 3, "b": 5}
    counts = [s for s in families["vllm:time_to_first_token_seconds"].samples if s.name.endswith("_count")]
    assert sorted(s.labels["model_name"] for s in counts) == ["a", "b"]
    assert merge_exposition(["", ""]) == b""
