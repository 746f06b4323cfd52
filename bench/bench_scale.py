"""`ragyard bench scale`: the app on a real two-node Ray cluster on this machine (bench/cluster.py),
two replicas of gateway, retriever, router and worker, its corpus log and budgets on a real Redis. Writes
``scale.json`` and ``scale.md``:

- ingest-to-visible latency on every retriever replica (p50/p95), and documents missing on any replica;
- chunk-set affinity hit rate (a worker finding a request's chunk KV in its own memory) with the cache-affine
  request router and with Serve's default, each on chunk sets no worker has seen;
- answers per second with 1 and 2 worker replicas (on 2 cores the second replica has no core of its own);
- requests lost when the second node is killed -9 under load, and how each was answered.

Each phase that changes the deployment redeploys the app (Serve restarts the replicas; the corpus log brings
the new retrievers up to date before they report ready)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import reports, scale
from core.config import PROJECT_ROOT
from services.config import load_config
from services.serve.local import free_port


def run_scale(
    *, docs: int = 20, rounds: int = 4, load_s: float = 45.0, clients: int = 3, log: Callable[[str], None] = print
) -> dict[str, Any]:
    from bench.chaos.redis_server import RedisServer
    from bench.cluster import LocalCluster, deploy

    # Short: Ray's socket paths under each node's temp dir must stay within 107 bytes.
    root = PROJECT_ROOT / ".tmp" / f"bs{os.getpid() % 100000}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    redis = RedisServer(root / "redis").start()
    cluster = LocalCluster(root / "ray")  # before Ray is imported: it sets the token Ray reads then
    from ray import serve

    port = free_port()
    results: dict[str, Any] = {}

    def redeploy(**kw: Any) -> str:
        started = time.perf_counter()
        url = deploy(load_config(scale.scale_config(root, redis.url, port, **kw)), cluster)
        log(f"scale: deployed {kw or 'affinity, 2 workers'} in {time.perf_counter() - started:.0f} s")
        return url

    def handle(name: str) -> Any:
        return serve.get_deployment_handle(name, app_name="ragyard")

    try:
        started = time.perf_counter()
        cluster.start_head()
        cluster.add_node("node2", 2)
        results["cluster_start_s"] = round(time.perf_counter() - started, 1)
        url = redeploy()
        log("scale: ingest-to-visible")
        results["ingest"] = asyncio.run(scale.census(url, handle("retriever"), docs))
        for routing in ("affinity", "default"):
            if routing == "default":
                url = redeploy(worker_routing="default")
            log(f"scale: chunk-set affinity, {routing} routing")
            questions, generation = asyncio.run(scale.seed_affinity_docs(url, tag=routing))
            results[f"affinity_{routing}"] = asyncio.run(scale.affinity(url, questions, generation, rounds))
            if routing == "affinity":
                results["unbounded_affinity_kv_bytes"] = _kv_bytes_held(cluster)
        # The same with a working set twice what one worker's memory tier holds: affinity splits it between the
        # replicas, Serve's default makes each replica hold all of it. The tier's size: 1.2 x what both workers
        # held after the unbounded affinity run (one copy of SETS chunk sets), for 2 x SETS sets.
        sets = 2 * scale.SETS
        held = results["unbounded_affinity_kv_bytes"]
        memory = int(1.2 * held) if held > 0 else 8 << 20
        results["bounded_memory_bytes"] = memory
        for routing in ("affinity", "default"):
            url = redeploy(worker_routing=routing, chunk_memory_bytes=memory)
            log(f"scale: chunk-set affinity, {routing} routing, {memory} bytes of chunk KV per worker")
            questions, generation = asyncio.run(scale.seed_affinity_docs(url, tag=f"b{routing}", sets=sets))
            results[f"bounded_{routing}"] = asyncio.run(scale.affinity(url, questions, generation, rounds))
        for workers in (1, 2):
            url = redeploy(worker_replicas=workers)
            log(f"scale: throughput with {workers} worker replica(s)")
            samples = asyncio.run(scale.Load(url, clients=clients).run(load_s))
            results[f"throughput_{workers}_workers"] = scale.summarise_load(samples, load_s)
        log("scale: kill -9 the second node under load")
        fault_at = load_s / 3
        samples = asyncio.run(
            scale.Load(url, clients=clients).run(load_s, during=lambda: cluster.kill_node("node2"), at_s=fault_at)
        )
        results["node_kill"] = scale.summarise_load(samples, load_s, fault_at=fault_at)
    finally:
        import ray

        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        cluster.stop()
        redis.stop()
    return results


def _kv_bytes_held(cluster: Any) -> float:
    """Chunk KV in the workers' memory tiers, summed over replicas (Ray's export lags: polled, bounded)."""
    held, deadline = 0.0, time.monotonic() + 60
    while held <= 0 and time.monotonic() < deadline:
        time.sleep(3)
        held = sum(scale.ray_metric(cluster, "ray_ragyard_chunk_kv_memory_bytes").values())
    return held


def goals(results: dict[str, Any]) -> dict[str, Any]:
    aff = (results.get("affinity_affinity") or {}).get("hit_rate")
    default = (results.get("affinity_default") or {}).get("hit_rate")
    b_aff = (results.get("bounded_affinity") or {}).get("hit_rate")
    b_default = (results.get("bounded_default") or {}).get("hit_rate")
    kill = results.get("node_kill") or {}
    t1 = (results.get("throughput_1_workers") or {}).get("answers_per_s")
    t2 = (results.get("throughput_2_workers") or {}).get("answers_per_s")
    return {
        "ingest_visible_p50_s": (results.get("ingest") or {}).get("visible_p50_s"),
        "ingest_visible_p95_s": (results.get("ingest") or {}).get("visible_p95_s"),
        "documents_missing": (results.get("ingest") or {}).get("missing"),
        "affinity_hit_rate": aff,
        "default_hit_rate": default,
        "affinity_vs_default": round(aff / default, 2) if aff is not None and default else None,
        "bounded_affinity_hit_rate": b_aff,
        "bounded_default_hit_rate": b_default,
        "bounded_affinity_vs_default": round(b_aff / b_default, 2) if b_aff is not None and b_default else None,
        "node_kill_lost_ratio": kill.get("lost_ratio"),
        "node_kill_lost_retryable": kill.get("lost_retryable"),
        "node_kill_lost_in_dead_gateway": kill.get("lost_in_dead_gateway"),
        "answers_per_s_1_worker": t1,
        "answers_per_s_2_workers": t2,
        "throughput_ratio": round(t2 / t1, 2) if t1 and t2 else None,
    }


def write_report(out: str | Path, results: dict[str, Any], settings: dict[str, Any]) -> str:
    return reports.write_report(out, "scale", goals(results), results, settings, _markdown)


def _markdown(report: dict[str, Any]) -> str:
    g, r = report["goals"], report["results"]
    kill = r.get("node_kill") or {}
    ingest = r.get("ingest") or {}
    per_replica = ", ".join(
        f"{name}: {v['p50']}/{v['p95']} s" for name, v in sorted((ingest.get("visible_s") or {}).items())
    )
    rows = [
        ("ingest to visible, p50 / p95 (all replicas)", f"{g['ingest_visible_p50_s']} / {g['ingest_visible_p95_s']} s"),
        ("ingest to visible per replica, p50/p95", per_replica or "not run"),
        (f"documents missing on any replica (of {ingest.get('documents')})", g["documents_missing"]),
        ("chunk-set hit rate, affinity router", g["affinity_hit_rate"]),
        ("chunk-set hit rate, Serve's default router", g["default_hit_rate"]),
        ("affinity / default", g["affinity_vs_default"]),
        (
            f"hit rate, {2 * scale.SETS} chunk sets, {r.get('bounded_memory_bytes')} B of chunk KV per worker: "
            "affinity / default",
            f"{g['bounded_affinity_hit_rate']} / {g['bounded_default_hit_rate']} ({g['bounded_affinity_vs_default']}x)",
        ),
        (
            "node kill: requests / lost (ratio)",
            f"{kill.get('requests')} / {kill.get('lost')} ({g['node_kill_lost_ratio']})",
        ),
        (
            "node kill: lost as 429/503 / as the proxy's 500 for a dead gateway",
            f"{g['node_kill_lost_retryable']} / {g['node_kill_lost_in_dead_gateway']}",
        ),
        ("node kill: statuses", kill.get("statuses")),
        (
            "node kill: answers begun after it / longest silence after it",
            f"{kill.get('answered_after_fault')} / {kill.get('longest_silence_after_fault_s')} s",
        ),
        ("answers/s, 1 worker replica", g["answers_per_s_1_worker"]),
        ("answers/s, 2 worker replicas", g["answers_per_s_2_workers"]),
        ("2 / 1 workers", g["throughput_ratio"]),
    ]
    lines = ["| figure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]
    s = report["settings"]
    lines += [
        "",
        f"Two nodes (head + node2, 2 logical CPUs each) on {report['machine']['cpus']} cores; {s['docs']} documents, "
        f"{s['rounds']} rounds over {scale.SETS} chunk sets per router, {s['clients']} clients for {s['load_s']:g} s "
        "per load.",
    ]
    return "\n".join(lines) + "\n"


def bench_scale(out: str | Path, *, docs: int, rounds: int, load_s: float, clients: int) -> str:
    settings = {"docs": docs, "rounds": rounds, "load_s": load_s, "clients": clients}
    results = run_scale(docs=docs, rounds=rounds, load_s=load_s, clients=clients)
    return write_report(out, results, settings)
