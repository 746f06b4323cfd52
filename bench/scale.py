"""The scale-out checks on a real multi-node Ray cluster on this machine: the app with two replicas of gateway,
retriever, router and worker across a head and a second node, its corpus log and budgets on a real Redis.
`ragyard bench scale` and tests/scale use these pieces.

- `census`: documents written through the gateway, and when each retriever replica holds them.
- `affinity`: chunk sets asked again and again; how often a worker found their KV in its own memory.
- `Load`: steady answers from a few clients, with the statuses that came back (a node may die meanwhile).
- `ray_metric`: a family summed over every node's Ray metrics export.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.cluster import LocalCluster

MODEL = "smollm2-135m-instruct"
TENANT_KEY = "sk-scale"
CAPPED_KEY = "sk-capped"
CAP = 2  # the capped tenant's answers in progress at once


def write_policy(path: Path) -> Path:
    path.write_text(
        "default_tier: standard\n"
        "tiers:\n"
        "  standard: {priority: 2, latency_ms: 120000}\n"
        "tenants:\n"
        f"  scale: {{api_keys: [{TENANT_KEY}], tier: standard, budget: {{tokens: 100000000}}}}\n"
        f"  capped: {{api_keys: [{CAPPED_KEY}], tier: standard, limits: {{max_concurrent: {CAP}}}}}\n",
        encoding="utf-8",
    )
    return path


def scale_config(
    root: Path,
    redis_url: str,
    port: int,
    *,
    worker_routing: str = "affinity",
    worker_replicas: int = 2,
    chunk_memory_bytes: int | None = None,
) -> dict[str, Any]:
    chunk_cache: dict[str, Any] = {"enabled": True}
    if chunk_memory_bytes is not None:
        chunk_cache["memory_bytes"] = chunk_memory_bytes
    return {
        "models": [{"id": MODEL, "chunk_cache": chunk_cache}],
        "index": {"dir": str(root / "index"), "log_url": redis_url},
        "cache": {"response_cache_url": "memory://"},
        "sla": {"enabled": True, "budget_url": redis_url, "policy_path": str(write_policy(root / "policy.yaml"))},
        "corpus": {"ingest_on_start": False},
        "server": {"host": "127.0.0.1", "port": port, "api_keys": ["sk-operator"]},
        "ray": {
            "worker_replicas": worker_replicas,
            "retriever_replicas": 2,
            "router_replicas": 2,
            "gateway_replicas": 2,
            "worker_routing": worker_routing,
        },
    }


def _auth(key: str = TENANT_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# -- one corpus across replicas ----------------------------------------------------------------------------
async def _inventories(handle: Any, doc_ids: list[str], calls: int = 8) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(handle.inventory.remote(doc_ids) for _ in range(calls))))


async def replica_ids(handle: Any, want: int, timeout_s: float = 60.0) -> set[str]:
    """The retriever replicas' ids, once ``want`` of them have answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < want and time.monotonic() < deadline:
        seen |= {r["replica"] for r in await _inventories(handle, [])}
    return seen


async def census(url: str, handle: Any, n_docs: int, *, replicas: int = 2, timeout_s: float = 30.0) -> dict[str, Any]:
    """Write ``n_docs`` documents one by one through the gateway; after each, ask the retriever replicas
    (through a handle, so Serve spreads the asks) until every one holds it. Per replica: the seconds from
    the write's acknowledgement to the replica holding it; and what any replica still missed at the end."""
    ids = await replica_ids(handle, replicas)
    run = uuid.uuid4().hex[:8]
    visible: dict[str, list[float]] = {r: [] for r in ids}
    written: list[str] = []
    async with httpx.AsyncClient(timeout=60.0) as client:
        for n in range(n_docs):
            doc_id = f"scale-{run}-{n}"
            text = f"Scale note {n} of run {run}: the {n}th lighthouse of Quux is painted in colour {n * 7 % 11}."
            resp = await client.post(
                f"{url}/v1/documents",
                json={"documents": [{"id": doc_id, "title": f"Note {n}", "text": text}]},
                headers={"authorization": "Bearer sk-operator"},
            )
            resp.raise_for_status()
            acked = time.monotonic()
            written.append(doc_id)
            pending = set(ids)
            deadline = acked + timeout_s
            while pending and time.monotonic() < deadline:
                for inv in await _inventories(handle, [doc_id]):
                    if inv["replica"] in pending and not inv["missing"]:
                        pending.discard(inv["replica"])
                        visible[inv["replica"]].append(time.monotonic() - acked)
                if pending:
                    await asyncio.sleep(0.01)
    # Once more after the writes: every document on every replica.
    missing: dict[str, list[str]] = {r: [] for r in ids}
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while seen != ids and time.monotonic() < deadline:
        for inv in await _inventories(handle, written):
            if inv["replica"] in ids and inv["replica"] not in seen:
                seen.add(inv["replica"])
                missing[inv["replica"]] = inv["missing"]
    lat = [s for v in visible.values() for s in v]
    return {
        "documents": n_docs,
        "replicas": len(ids),
        "visible_s": {r: {"p50": _q(v, 0.5), "p95": _q(v, 0.95), "n": len(v)} for r, v in sorted(visible.items())},
        "visible_p50_s": _q(lat, 0.5),
        "visible_p95_s": _q(lat, 0.95),
        "missing": sum(len(v) for v in missing.values()) + sum(n_docs - len(v) for v in visible.values()),
        "unreached_replicas": sorted(ids - seen),
    }


def _q(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


# -- cache-affine routing ----------------------------------------------------------------------------------
SETS = 6  # distinct chunk sets (each a question over its own documents)


async def seed_affinity_docs(url: str, tag: str = "a", sets: int = SETS) -> tuple[list[str], int]:
    """Two small documents per chunk set, both about one town, so each question retrieves its own two chunks
    (``tag`` makes sets no worker has seen)."""
    questions = []
    async with httpx.AsyncClient(timeout=60.0) as client:
        docs = []
        for n in range(sets):
            town = f"Vell{n}ora-{tag}"
            month = ("May", "June", "July", "August")[n % 4]
            docs.append(
                {"id": f"affinity-{tag}-{n}", "title": town, "text": f"The town of {town} grows {n + 3} kinds of pear."}
            )
            docs.append(
                {"id": f"affinity-{tag}-{n}-h", "title": town, "text": f"{town} harvests its pears in {month}."}
            )
            questions.append(f"How many kinds of pear does {town} grow, and when are they harvested?")
        resp = await client.post(
            f"{url}/v1/documents", json={"documents": docs}, headers={"authorization": "Bearer sk-operator"}
        )
        resp.raise_for_status()
        return questions, int(resp.headers.get("x-ragyard-generation", "0"))


async def affinity(url: str, questions: list[str], generation: int, rounds: int) -> dict[str, Any]:
    """Ask every question ``rounds`` times, round-robin (temperature 0.1, so the response cache stays out);
    from the second round on, the share of chunks a worker found in its own memory tier."""
    hits = chunks = first_hits = first_chunks = 0
    async with httpx.AsyncClient(timeout=120.0) as client:
        for r in range(rounds):
            for question in questions:
                resp = await client.post(
                    f"{url}/v1/qa",
                    json={"question": question, "policy": "single", "top_k": 2, "max_tokens": 4, "temperature": 0.1},
                    headers={**_auth(), "x-ragyard-min-generation": str(generation)},
                )
                resp.raise_for_status()
                report = (resp.json().get("cache") or {}).get("chunk_kv") or {}
                memory = int((report.get("chunk_hits") or {}).get("memory", 0))
                total = int(report.get("chunks", 0))
                if r == 0:
                    first_hits, first_chunks = first_hits + memory, first_chunks + total
                else:
                    hits, chunks = hits + memory, chunks + total
    return {
        "rounds": rounds,
        "chunk_sets": len(questions),
        "chunks_asked": chunks,
        "memory_hits": hits,
        "hit_rate": round(hits / chunks, 4) if chunks else None,
        "first_round_hit_rate": round(first_hits / first_chunks, 4) if first_chunks else None,
    }


# -- steady load -------------------------------------------------------------------------------------------
@dataclass
class Sample:
    started: float
    seconds: float
    status: int
    code: str | None = None
    retry_after: str | None = None
    proxy: bool = False  # the error came from Serve's HTTP proxy (plain text), not from Ragyard (OpenAI-shaped)


@dataclass
class Load:
    url: str
    clients: int = 3
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _client(self, n: int) -> None:
        async with httpx.AsyncClient(timeout=120.0) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                t0 = time.monotonic()
                body = {
                    "question": f"What do the scale notes say about lighthouse {(n * 31 + i) % 9}?",
                    "max_tokens": 8,
                }
                try:
                    resp = await client.post(f"{self.url}/v1/qa", json={**body, "policy": "single"}, headers=_auth())
                    code, proxy = None, False
                    if resp.status_code != 200:
                        try:
                            code = resp.json()["error"]["code"]
                        except Exception:  # noqa: BLE001 - a proxy's plain-text error
                            code, proxy = resp.text[:60], True
                    self.samples.append(
                        Sample(
                            t0, time.monotonic() - t0, resp.status_code, code, resp.headers.get("retry-after"), proxy
                        )
                    )
                except httpx.HTTPError as exc:
                    self.samples.append(Sample(t0, time.monotonic() - t0, 0, type(exc).__name__))

    async def run(self, seconds: float, during: Any = None, at_s: float = 0.0) -> list[Sample]:
        tasks = [asyncio.create_task(self._client(n)) for n in range(self.clients)]
        started = time.monotonic()
        if during is not None:
            await asyncio.sleep(at_s)
            await asyncio.to_thread(during)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
        self._stop.set()
        await asyncio.gather(*tasks)
        return self.samples


RETRYABLE = {429, 503}


def summarise_load(samples: list[Sample], seconds: float, *, fault_at: float | None = None) -> dict[str, Any]:
    lost = [s for s in samples if s.status != 200]
    base = min((s.started for s in samples), default=0.0)
    ok = [s for s in samples if s.status == 200]
    out: dict[str, Any] = {
        "requests": len(samples),
        "answered": len(ok),
        "lost": len(lost),
        "lost_ratio": round(len(lost) / len(samples), 4) if samples else None,
        "lost_retryable": sum(1 for s in lost if s.status in RETRYABLE),
        # Serve's proxy answers 500 for a request whose gateway replica died under it (ray/serve/_private/
        # http_util.py maps RayActorError so); Ragyard's own errors are OpenAI-shaped.
        "lost_in_dead_gateway": sum(1 for s in lost if s.proxy and s.status == 500),
        "statuses": _count(str(s.status) for s in samples),
        "codes": _count(s.code for s in lost if s.code),
        "answers_per_s": round(len(ok) / seconds, 3) if seconds else None,
        "latency_p50_s": round(statistics.median([s.seconds for s in ok]), 3) if ok else None,
    }
    if fault_at is not None:
        after = [s for s in ok if s.started - base > fault_at]
        out["answered_after_fault"] = len(after)
        # The longest stretch after the fault with no answer coming back (a stall while the cluster noticed).
        ends = sorted(
            [base + fault_at] + [s.started + s.seconds for s in ok if s.started + s.seconds > base + fault_at]
        )
        out["longest_silence_after_fault_s"] = (
            round(max(b - a for a, b in zip(ends, ends[1:], strict=False)), 2) if len(ends) > 1 else None
        )
    return out


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[str(item)] = out.get(str(item), 0) + 1
    return dict(sorted(out.items()))


# -- metrics across replicas -------------------------------------------------------------------------------
def ray_metric(cluster: LocalCluster, name: str, match: dict[str, str] | None = None) -> dict[str, float]:
    """``name``'s samples on every node's Ray metrics export, summed per replica (the `replica` tag)."""
    from prometheus_client.parser import text_string_to_metric_families

    per_replica: dict[str, float] = {}
    for node in cluster.nodes.values():
        try:
            text = httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10.0).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != name:
                    continue
                if match and any(sample.labels.get(k) != v for k, v in match.items()):
                    continue
                replica = sample.labels.get("replica", "?")
                per_replica[replica] = per_replica.get(replica, 0.0) + sample.value
    return per_replica
