"""The SLA policy, quality table and latency priors the router's controller tests plan with (tests/router:
test_sla.py, test_shared_load.py)."""

from __future__ import annotations

from typing import Any

from router.priors import LatencyPriors

MODEL = "smollm2-135m-instruct"
POLICY: dict[str, Any] = {
    "default_tier": "standard",
    "tiers": {
        "interactive": {"priority": 3, "latency_ms": 6000, "ttft_ms": 3000},
        "standard": {"priority": 2, "latency_ms": 20000},
        "batch": {"priority": 1, "latency_ms": 60000, "max_tokens_per_request": 5000},
    },
    "tenants": {
        "acme": {"api_keys": ["k1"], "tier": "interactive", "budget": {"tokens": 100_000}},
        "tiny": {"api_keys": ["k2"], "tier": "batch", "budget": {"tokens": 3000}},
    },
}
QUALITY = {
    "none": {"A": 0.9, "B": 0.1, "C": 0.05},
    "single": {"A": 0.5, "B": 0.6, "C": 0.2},
    "multi": {"A": 0.5, "B": 0.55, "C": 0.5},
}

# The priors the controller's tests plan with: those measured on SmolLM2-135M (results/policies) that
# were constants in router/estimates.py before the priors became an artifact.
PRIORS = LatencyPriors(
    {
        MODEL: {
            "none": {"latency_s": 2.85, "p50_s": 1.42, "ttft_s": 1.0, "prompt_tokens": 57, "completion_tokens": 18},
            "single": {"latency_s": 5.0, "p50_s": 3.89, "ttft_s": 3.0, "prompt_tokens": 568, "completion_tokens": 22},
            "multi": {"latency_s": 13.0, "p50_s": 7.22, "ttft_s": 9.0, "prompt_tokens": 1402, "completion_tokens": 42},
            "dragin": {"latency_s": 10.1, "p50_s": 1.85, "ttft_s": 2.0, "prompt_tokens": 201, "completion_tokens": 23},
        }
    }
)
