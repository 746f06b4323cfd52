"""`ragyard bench sla`: the SLA controller against static plans under open-loop load.

It serves the app on Ray Serve (real model) on a free loopback port, once per mode (the controller;
static `single`; static `multi`), unless `--url` names a running server. It measures capacity (the
saturated throughput of static `single`, closed loop), then drives each mode with Poisson arrivals at
0.5x, 1x and 2x that capacity from a separate process, with a mix of tiers. Per tier: SLO attainment
(answered within its latency and TTFT targets, over every request sent: a shed request misses),
goodput (requests per second that met their SLO, as DistServe counts it), p50/p95 latency of the
answered, and F1 of the answers. In the controller mode a burst of concurrent requests from tenants
with small budgets checks that no budget is overspent.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.harness import percentile, read_rows
from core.scoring import score
from router.sla import SlaPolicy, load_policy_file
from services.config import PROJECT_ROOT, AppConfig
from services.serve.local import free_port

logger = logging.getLogger(__name__)

DEFAULT_POLICY = PROJECT_ROOT / "bench" / "sla_bench.yaml"
MIX = {"interactive": 0.3, "standard": 0.4, "batch": 0.3}
KEYS = {"interactive": "bench-interactive", "standard": "bench-standard", "batch": "bench-batch"}
OPERATOR_KEY = "bench-operator"
MODES = ("static_single", "static_multi", "controller")


def _app_config(
    config: AppConfig, mode: str, data: list[str], policy_file: Path, port: int, redis_url: str | None, run_id: str
) -> AppConfig:
    from services.config import load_config

    cfg = config.model_dump(mode="json")
    controller = mode == "controller"
    cfg["server"] = {
        **cfg["server"],
        "host": "127.0.0.1",
        "port": port,
        "api_keys": [OPERATOR_KEY] if controller else [],
    }
    cfg["sla"] = {
        **cfg["sla"],
        "enabled": controller,
        "policy_path": str(policy_file.resolve()),
        "budget_url": redis_url or "memory://",
        "budget_prefix": f"ragyard:bench:{run_id}:",
    }
    if not controller:
        cfg["retrieval"] = {**cfg["retrieval"], "default_policy": mode.removeprefix("static_")}
    cfg["cache"] = {**cfg["cache"], "enabled": False}  # repeated questions must not be answered from cache
    cfg["corpus"] = {"paths": [str(Path(d).resolve()) for d in data], "ingest_on_start": True}
    names = "-".join(sorted(Path(d).stem for d in data))
    cfg["index"] = {**cfg["index"], "dir": str(Path(config.cache_dir).expanduser() / "eval-index" / f"sla-{names}")}
    return load_config(cfg)


def _deploy(cfg: AppConfig, first: bool) -> str:
    from ray import serve

    from services.serve import local as serving
    from services.serve.app import build_app

    if first:
        return serving.start(cfg, wait_ready_s=1200)
    serve.run(build_app(cfg.model_dump(mode="json")), name=serving.APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{cfg.server.host}:{cfg.server.port}"
    time.sleep(5)  # let the old replicas go before asking for readiness
    serving.wait_ready(url, 1200)
    return url


def _loadgen(url: str, reqs: list[dict[str, Any]], work: Path, name: str, *flags: str) -> dict[str, Any]:
    req_file = work / f"{name}.requests.jsonl"
    out_file = work / f"{name}.results.json"
    req_file.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", url, "--requests", str(req_file)]
    cmd += ["--out", str(out_file), *flags]
    subprocess.run(cmd, check=True, cwd=PROJECT_ROOT)
    return json.loads(out_file.read_text())


def _requests(rows: list[dict[str, Any]], n: int, rng: random.Random, offset: int) -> list[dict[str, Any]]:
    tiers = list(MIX)
    weights = [MIX[t] for t in tiers]
    out = []
    for i in range(n):
        row = rows[(offset + i) % len(rows)]
        tier = rng.choices(tiers, weights)[0]
        out.append({"i": i, "question": row["question"], "answers": row["answers"], "tier": tier, "key": KEYS[tier]})
    return out


def summarise(
    results: list[dict[str, Any]], reqs: list[dict[str, Any]], policy: SlaPolicy, duration_s: float
) -> dict[str, Any]:
    by_i = {r["i"]: r for r in reqs}
    out: dict[str, Any] = {}
    for tier in [*MIX, "all"]:
        rs = [r for r in results if tier == "all" or r.get("tier") == tier]
        ok = [r for r in rs if r.get("status") == 200 and "latency_s" in r]
        met = 0
        for r in ok:
            t = policy.tiers[r["tier"]]
            if r["latency_s"] * 1000 <= t.latency_ms and (t.ttft_ms is None or r["ttft_s"] * 1000 <= t.ttft_ms):
                met += 1
        lat = [r["latency_s"] for r in ok]
        f1s = [score(r.get("answer", ""), by_i[r["i"]]["answers"])[1] for r in ok]
        policies: dict[str, int] = {}
        for r in ok:
            policies[str(r.get("policy"))] = policies.get(str(r.get("policy")), 0) + 1
        out[tier] = {
            "slo_attainment": round(met / len(rs), 4) if rs else None,
            "goodput_rps": round(met / duration_s, 4),
            "p50_latency_s": round(percentile(lat, 0.5), 3) if lat else None,
            "p95_latency_s": round(percentile(lat, 0.95), 3) if lat else None,
            "f1": round(statistics.fmean(f1s), 4) if f1s else None,
            "sent": len(rs),
            "answered": len(ok),
            "shed_429": sum(1 for r in rs if r.get("status") == 429),
            "unfinished": sum(1 for r in rs if r.get("code") == "not_finished"),
            "degraded": sum(1 for r in ok if r.get("degraded")),
            "plans": policies,
        }
    return out


def _wait_idle(url: str, controller: bool, timeout_s: float = 120.0) -> None:
    """Between phases: let the server finish what the last phase left (cancelled streams stop early)."""
    deadline = time.monotonic() + timeout_s
    time.sleep(3)
    while controller and time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/v1/sla", headers={"authorization": f"Bearer {OPERATOR_KEY}"}, timeout=10).json()
        except httpx.HTTPError:
            return
        if status.get("in_flight", 0) == 0:
            return
        time.sleep(2)
    if not controller:
        time.sleep(10)


def bench_sla(
    config: AppConfig,
    data: list[str],
    out: str | Path,
    *,
    url: str | None = None,
    mode: str = "controller",
    policy_path: str | None = None,
    duration_s: float = 60.0,
    drain_s: float = 90.0,
    capacity_s: float = 60.0,
    capacity: float | None = None,
    loads: tuple[float, ...] = (0.5, 1.0, 2.0),
    burst: int = 1000,
    max_tokens: int = 32,
    seed: int = 0,
    redis_url: str | None = None,
) -> str:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    work.mkdir(exist_ok=True)
    policy_file = out / "sla.yaml"
    shutil.copyfile(policy_path or DEFAULT_POLICY, policy_file)
    policy = load_policy_file(policy_file)
    missing = [k for k in [*KEYS.values()] if policy.tenant_for_key(k) is None]
    if missing:
        raise ValueError(f"the SLA policy needs tenants with the bench keys {missing} (see {DEFAULT_POLICY})")
    rng = random.Random(seed)
    rows = [r for path in data for r in read_rows(path)]
    rng.shuffle(rows)
    run_id = uuid.uuid4().hex[:8]
    modes = (mode,) if url else MODES
    result: dict[str, Any] = {
        "loads": {f"{f:g}x": {} for f in loads},
        "modes": list(modes),
        "data": [str(d) for d in data],
        "mix": MIX,
        "duration_s": duration_s,
        "max_tokens": max_tokens,
        "tiers": {n: t.model_dump() for n, t in policy.tiers.items()},
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    offset = 0
    port = free_port()
    try:
        for n_mode, m in enumerate(modes):
            if url is None:
                logger.warning("bench sla: deploying %s", m)
                base = _deploy(_app_config(config, m, data, policy_file, port, redis_url, run_id), first=n_mode == 0)
            else:
                base = url
            warm = _requests(rows, 6, rng, offset)
            offset += 6
            _loadgen(base, warm, work, f"{m}-warmup", "--concurrency", "1", "--duration", "600")
            if capacity is None:
                reqs = _requests(rows, 400, rng, offset)
                for r in reqs:
                    r["policy"] = "single"  # capacity is static single's throughput
                    r["key"] = KEYS["standard"]
                got = _loadgen(base, reqs, work, f"{m}-capacity", "--concurrency", "4", "--duration", str(capacity_s))
                done = [r for r in got["results"] if r.get("status") == 200]
                capacity = len(done) / max(got["elapsed_s"], 1e-9)
                result["capacity"] = {
                    "rps": round(capacity, 4),
                    "measured_on": m,
                    "closed_loop_clients": 4,
                    "answered": len(done),
                    "seconds": got["elapsed_s"],
                }
                logger.warning("bench sla: capacity %.3f requests/s", capacity)
                _wait_idle(base, m == "controller")
            for f in loads:
                rate = f * capacity
                n = int(rate * duration_s * 1.5) + 10
                reqs = _requests(rows, n, rng, offset)
                offset += n
                got = _loadgen(
                    base,
                    reqs,
                    work,
                    f"{m}-{f:g}x",
                    "--rate",
                    str(rate),
                    "--duration",
                    str(duration_s),
                    "--drain",
                    str(drain_s),
                    "--max-tokens",
                    str(max_tokens),
                    "--seed",
                    str(seed + int(f * 100)),
                )
                summary = summarise(got["results"], reqs, policy, duration_s)
                summary["offered_rps"] = round(rate, 4)
                result["loads"][f"{f:g}x"][m] = summary
                logger.warning(
                    "bench sla: %s at %gx: goodput %.3f/s, interactive attainment %s",
                    m,
                    f,
                    summary["all"]["goodput_rps"],
                    summary["interactive"]["slo_attainment"],
                )
                _wait_idle(base, m == "controller")
            if m == "controller" and burst:
                result["burst"] = _burst(base, rows, policy, burst, work)
    finally:
        if url is None:
            from services.serve import local as serving

            serving.stop()
    _ratios(result, loads)
    (out / "sla.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "sla.md").write_text(table)
    try:
        plot(result, out / "sla.png")
    except ImportError:  # plotting is an optional extra; the JSON and the table are the results
        logger.warning("sla.png not drawn: matplotlib is not installed (pip install 'ragyard[bench]')")
    return table


def _burst(url: str, rows: list[dict[str, Any]], policy: SlaPolicy, n: int, work: Path) -> dict[str, Any]:
    """n concurrent requests from the tenants with budgets; then each one's spend against its limit."""
    tenants = [(name, t) for name, t in policy.tenants.items() if t.budget is not None and t.budget.tokens]
    if not tenants:
        return {"skipped": "no tenant in the policy has a token budget"}
    reqs = []
    for i in range(n):
        name, t = tenants[i % len(tenants)]
        row = rows[i % len(rows)]
        reqs.append(
            {"i": i, "question": row["question"], "answers": row["answers"], "tier": t.tier, "key": t.api_keys[0]}
        )
    got = _loadgen(url, reqs, work, "burst", "--burst", "--max-tokens", "8")
    statuses: dict[str, int] = {}
    for r in got["results"]:
        key = str(r.get("status")) + (f" {r['code']}" if r.get("code") else "")
        statuses[key] = statuses.get(key, 0) + 1
    deadline = time.monotonic() + 120
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/v1/sla", headers={"authorization": f"Bearer {OPERATOR_KEY}"}, timeout=30).json()
        if status.get("in_flight", 0) == 0:
            break
        time.sleep(1)
    per_tenant = {}
    overspend = 0
    for name, _t in tenants:
        entry = status["tenants"][name]
        spent = entry["usage"]["spent_tokens"]
        limit = entry["budget"]["tokens"]
        overspend += max(0, spent - limit)
        per_tenant[name] = {
            "budget_tokens": limit,
            "spent_tokens": spent,
            "reserved_tokens": entry["usage"]["reserved_tokens"],
        }
    return {
        "requests": n,
        "seconds": got["elapsed_s"],
        "statuses": statuses,
        "tenants": per_tenant,
        "budget_overspend_tokens": overspend,
    }


def _ratios(result: dict[str, Any], loads: tuple[float, ...]) -> None:
    ratios: dict[str, Any] = {}
    for f in loads:
        by_mode = result["loads"][f"{f:g}x"]
        if "controller" in by_mode and "static_multi" in by_mode:
            ctl = by_mode["controller"]["all"]["goodput_rps"]
            base = by_mode["static_multi"]["all"]["goodput_rps"]
            ratios[f"{f:g}x"] = round(ctl / base, 3) if base > 0 else None
            if base == 0:
                ratios[f"{f:g}x_note"] = f"static multi's goodput was 0; the controller's was {ctl}"
    result["goodput_ratio_vs_static_multi"] = ratios
    burst = result.get("burst") or {}
    result["budget_overspend_tokens"] = burst.get("budget_overspend_tokens")


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"capacity (static single, closed loop): {result.get('capacity', {}).get('rps')} requests/s",
        "",
        "| load | mode | tier | SLO attainment | goodput (req/s) | p50 s | p95 s | F1 | sent | shed | degraded |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for load, by_mode in result["loads"].items():
        for mode, tiers in by_mode.items():
            for tier in [*MIX, "all"]:
                t = tiers[tier]
                lines.append(
                    f"| {load} | {mode} | {tier} | {t['slo_attainment']} | {t['goodput_rps']} | {t['p50_latency_s']} "
                    f"| {t['p95_latency_s']} | {t['f1']} | {t['sent']} | {t['shed_429']} | {t['degraded']} |"
                )
    lines += ["", f"goodput ratio vs static multi: {json.dumps(result.get('goodput_ratio_vs_static_multi'))}"]
    burst = result.get("burst")
    if burst and "requests" in burst:
        lines.append(
            f"burst of {burst['requests']} concurrent requests: statuses {json.dumps(burst['statuses'])}; "
            f"budget overspend {burst['budget_overspend_tokens']} tokens"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = list(result["loads"])
    modes = result["modes"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(modes))
    for k, mode in enumerate(modes):
        xs = [i + k * width for i in range(len(loads))]
        good = [result["loads"][ld].get(mode, {}).get("all", {}).get("goodput_rps") or 0 for ld in loads]
        att = [result["loads"][ld].get(mode, {}).get("interactive", {}).get("slo_attainment") or 0 for ld in loads]
        axes[0].bar(xs, good, width, label=mode)
        axes[1].bar(xs, att, width, label=mode)
    for ax, title in zip(axes, ("goodput, all tiers (req/s)", "interactive SLO attainment"), strict=True):
        ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(loads))], [f"{ld} capacity" for ld in loads])
        ax.set_title(title)
        ax.legend()
    axes[1].axhline(0.95, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
