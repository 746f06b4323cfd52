"""The SLA controller's metric families, in a registry of their own: the router replica serves them and the
gateway merges them into its /metrics; inside Serve each is also exported through Ray (core/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from core.metrics import counter, gauge

REGISTRY = CollectorRegistry(auto_describe=True)
SLA_REQUESTS = counter(
    "ragyard_sla_requests_total",
    "Admitted requests by tier and outcome (met: within latency and TTFT targets; missed; failed).",
    ["tier", "outcome"],
    registry=REGISTRY,
)
SLA_ATTAINMENT = gauge(
    "ragyard_sla_slo_attainment_ratio",
    "Share of the tier's last 200 admitted requests that met the SLO.",
    ["tier"],
    registry=REGISTRY,
)
DECISIONS = counter(
    "ragyard_sla_decisions_total",
    "Plans chosen, by tier, retrieval policy and model.",
    ["tier", "policy", "model"],
    registry=REGISTRY,
)
DEGRADED = counter(
    "ragyard_sla_degraded_total",
    "Requests given a cheaper plan than they would get unloaded.",
    ["tier"],
    registry=REGISTRY,
)
SHED = counter("ragyard_sla_shed_total", "Requests refused with 429, by reason.", ["tier", "reason"], registry=REGISTRY)
SPENT_TOKENS = counter(
    "ragyard_sla_budget_spent_tokens_total", "Tokens charged by tenant.", ["tenant"], registry=REGISTRY
)
SPENT_COST = counter("ragyard_sla_budget_spent_cost_total", "Money charged by tenant.", ["tenant"], registry=REGISTRY)
IN_FLIGHT = gauge("ragyard_sla_in_flight", "Admitted requests not finished, by model.", ["model"], registry=REGISTRY)
UNSETTLED = gauge(
    "ragyard_sla_unsettled_tickets",
    "Settlements waiting for the budget store to come back (retried on later requests).",
    registry=REGISTRY,
)
TICKETS_EXPIRED = counter(
    "ragyard_sla_tickets_expired_total",
    "Reservations released by their lease because no report came (a lost gateway or router).",
    registry=REGISTRY,
)
POLICY_VERSION = gauge("ragyard_sla_policy_version", "Version of the SLA policy in force.", registry=REGISTRY)


def metrics_text() -> str:
    return generate_latest(REGISTRY).decode()
