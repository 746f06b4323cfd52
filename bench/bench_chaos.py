"""`ragyard bench chaos`: faults, kills and bad input against a real Serve app on loopback; writes
``chaos.json`` and ``chaos.md`` with the figures each goal is read from (bench/chaos/).

The goals: no 5xx among the bad inputs; per fault the statuses, p50/p95, seconds until the first 200 and
the worst /healthz latency; no acknowledged document lost; no reserved tokens leaked; no overspend; tokens
charged equal to tokens delivered; no cross-tenant read that succeeds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import reports
from bench.chaos.scenarios import Chaos, Settings

# Scenario order: the kills last, so a replica that comes back slowly cannot spoil the other figures.
SCENARIOS = (
    "bad_inputs",
    "cross_tenant",
    "tier_downgrade",
    "metering",
    "streams_closed_early",
    "budget_race",
    "midnight",
    "redis_faults",
    "store_writers",
    "ingest_under_retriever_kills",
    "replica_kills",
    "hostile_waits",
)


def run_chaos(
    chaos: Chaos, only: tuple[str, ...] = SCENARIOS, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in only:
        started = time.perf_counter()
        if log:
            log(f"chaos: {name}")
        results[name] = getattr(chaos, name)()
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
    results["final_usage"] = chaos.final_usage()
    return results


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal figures, read from whichever scenarios ran (None: not run)."""

    def get(*path: str) -> Any:
        node: Any = results
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    # Per tenant, once every report settled and every lapsed lease was released (goal: 0 each).
    leaked = {tenant: u["reserved_tokens"] for tenant, u in (results.get("final_usage") or {}).items()}
    lost = [v for v in (get("store_writers", "lost"), get("ingest_under_retriever_kills", "lost")) if v is not None]
    return {
        "bad_inputs_tried": get("bad_inputs", "tried"),
        "bad_inputs_5xx": get("bad_inputs", "five_xx"),
        "bad_inputs_unexpected": None if get("bad_inputs") is None else len(get("bad_inputs", "unexpected")),
        "acknowledged_documents_lost": sum(lost) if lost else None,
        "leaked_reserved_tokens": leaked,
        "overspend_tokens": get("budget_race", "overspend"),
        "tokens_charged": get("metering", "tokens_charged"),
        "tokens_delivered": get("metering", "tokens_delivered"),
        "cross_tenant_reads_succeeded": get("cross_tenant", "succeeded"),
        "bad_inputs_by_kind": get("bad_inputs", "kinds"),
        "hostile_worst_small_s": {
            k: v["worst_small_s"] for k, v in (get("hostile_waits") or {}).items() if isinstance(v, dict)
        }
        or None,
    }


def write_report(out: str | Path, results: dict[str, Any], settings: Settings) -> str:
    return reports.write_report(out, "chaos", goals(results), results, dict(vars(settings)), _markdown)


def _markdown(report: dict[str, Any]) -> str:
    g = report["goals"]
    lines = ["| goal | figure |", "| --- | --- |"]
    tried = f"{g['bad_inputs_tried']} / {g['bad_inputs_5xx']} / {g['bad_inputs_unexpected']}"
    lines.append(f"| bad inputs tried / 5xx / other than expected | {tried} |")
    lines.append(f"| acknowledged documents lost | {g['acknowledged_documents_lost']} |")
    leaked = ", ".join(f"{k} {v}" for k, v in g["leaked_reserved_tokens"].items()) or "not run"
    lines.append(f"| reserved tokens left after settling | {leaked} |")
    lines.append(f"| overspend (tokens) | {g['overspend_tokens']} |")
    lines.append(f"| tokens charged / delivered | {g['tokens_charged']} / {g['tokens_delivered']} |")
    lines.append(f"| cross-tenant reads that succeeded | {g['cross_tenant_reads_succeeded']} |")
    hostile = {k: v for k, v in report["results"].get("hostile_waits", {}).items() if isinstance(v, dict)}
    if hostile:
        lines += [
            "",
            "| hostile request (one tenant) | its status | its s | small requests of another tenant meanwhile "
            "| failed | median s | worst s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in hostile.items():
            lines.append(
                f"| {name} | {r['status']} | {r['hostile_s']} | {r['small_requests']} | {r['small_failed']} "
                f"| {r['median_small_s']} | {r['worst_small_s']} |"
            )
    faults = dict(report["results"].get("redis_faults", {}))
    faults.pop("acme_usage", None)
    faults.pop("seconds", None)
    kills = {
        f"kill -9 {k}": v
        for k, v in report["results"].get("replica_kills", {}).items()
        if isinstance(v, dict) and "statuses" in v
    }
    rows = {f"redis {k}": v for k, v in faults.items() if isinstance(v, dict)} | kills
    if rows:
        lines += [
            "",
            "| fault | requests | statuses | p50 s | p95 s | s to first 200 | worst /healthz s "
            "| not retryable (of them in flight at its start) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in rows.items():
            statuses = " ".join(f"{s}:{n}" for s, n in r["statuses"].items())
            lines.append(
                f"| {name} | {r['requests']} | {statuses} | {r['p50_s']} | {r['p95_s']} | {r['seconds_to_first_200']} "
                f"| {r['worst_healthz_s']} | {r['not_retryable']} ({r['not_retryable_in_flight']}) |"
            )
    return "\n".join(lines) + "\n"


def bench_chaos(out: str | Path, base: dict[str, Any], settings: Settings, only: tuple[str, ...] = SCENARIOS) -> str:
    workdir = Path(base.get("ray", {}).get("temp_dir", ".tmp/ray")).resolve().parent / f"chaos-{os.getpid()}"
    chaos = Chaos(workdir, settings)
    try:
        chaos.start(base)
        results = run_chaos(chaos, only, log=lambda m: print(m, flush=True))
    finally:
        chaos.stop()
    return write_report(out, results, settings)
