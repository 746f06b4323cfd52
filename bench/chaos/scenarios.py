"""The chaos scenarios, on a real Serve app on loopback whose Redis (budgets, rate limits, response cache)
sits behind a fault proxy in front of a real redis-server with its append-only file.

Each scenario returns a plain dict of figures; `ragyard bench chaos` runs them all and writes the report,
and `tests/reliability` runs them with shorter faults and asserts the goals. Every server started here
binds to loopback and is stopped by `Chaos.stop`; every load is bounded in clients and seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.chaos import battery
from bench.chaos.battery import CHAT, DOCS, OPERATOR_KEY, OTHER_KEY, TENANT_KEY, Case
from bench.chaos.load import RETRYABLE, Load, auth_headers, error_code
from bench.chaos.proxy import FaultProxy
from bench.chaos.redis_server import RedisServer
from bench.chaos.writer import kill_writers
from services.serve.local import free_port

MODEL = "smollm2-135m-instruct"
# One call of the `none` or `single` policy may reserve up to the model's context (its worst case).
WORST_TOKENS = 2048
RACE_BUDGET = 3 * WORST_TOKENS
REPLICAS = ("worker", "router", "retriever", "gateway")


@dataclass
class Settings:
    fault_s: float = 10.0  # how long each Redis fault lasts
    clients: int = 4  # concurrent clients of the load
    recover_s: float = 120.0  # the longest a scenario waits for the first 200 after a fault
    writer_kills: int = 200
    streams: int = 30
    race_requests: int = 200
    ingest_docs: int = 24
    # hostile_waits: the expensive requests' sizes (each within its bound, so the server does the work)
    hostile_embed_inputs: int = 256  # of 256 tokens each: embedder.max_tokens_per_request (65,536) in full
    hostile_jsonl_docs: int = 10_000  # retrieval.ingest.MAX_DOCUMENTS
    lease_s: int = 15  # the SLA tickets' lease in the scenario's policy
    replicas: tuple[str, ...] = REPLICAS


def policy(settings: Settings) -> dict[str, Any]:
    # Limits far above what the scenarios send: they never refuse, but every request counts in Redis, so the
    # rate-limit store meets the faults too.
    limits = {"rpm": 100_000, "tpm": 100_000_000, "max_concurrent": 64}
    tenant = {"tier": "standard", "budget": {"tokens": 50_000_000}, "limits": limits}
    return {
        "default_tier": "standard",
        "tiers": {
            "interactive": {"priority": 3, "latency_ms": 600_000},
            "standard": {"priority": 2, "latency_ms": 900_000, "max_tokens_per_request": 8192},
            "batch": {"priority": 1, "latency_ms": 1_800_000},
        },
        "tenants": {
            "acme": {"api_keys": [TENANT_KEY], **tenant},
            "globex": {"api_keys": [OTHER_KEY], **tenant},
            "meter": {"api_keys": ["k-meter"], **tenant},
            "streamer": {"api_keys": ["k-streamer"], **tenant},
            "race": {"api_keys": ["k-race"], "tier": "standard", "budget": {"tokens": RACE_BUDGET}},
        },
        "controller": {"ticket_lease_s": settings.lease_s},
    }


@dataclass
class Chaos:
    workdir: Path
    settings: Settings = field(default_factory=Settings)
    url: str = ""
    redis: RedisServer | None = None
    proxy: FaultProxy | None = None

    # -- the app ------------------------------------------------------------------------------------
    def start(self, base: dict[str, Any] | None = None, *, seed_index: Path | None = None) -> Chaos:
        """redis-server (AOF) behind the fault proxy, then the app on Serve with 2 gateway replicas. ``seed_index``:
        an index directory of the bundled corpus made with the same embedder and chunking, copied in as the app's
        index first (its retriever then finds the corpus unchanged instead of embedding it again at start)."""
        from services.config import load_config
        from services.serve import local as serving

        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        if seed_index is not None:
            shutil.copytree(seed_index, self.workdir / "index", ignore=shutil.ignore_patterns(".lock"))
        self.redis = RedisServer(self.workdir / "redis").start()
        self.proxy = FaultProxy(self.redis.port).start()
        policy_path = self.workdir / "sla.yaml"
        policy_path.write_text(yaml.safe_dump(policy(self.settings)), encoding="utf-8")
        base = dict(base or {})
        config = {
            **base,
            # No chunk KV computed ahead: the warm-up over the bundled corpus would take the cores from the
            # scenarios' requests (and from their timings) for a minute after the start.
            "models": [{"id": MODEL, "chunk_cache": {"precompute": False}}],
            "index": {"dir": str(self.workdir / "index")},
            # Two gateway replicas (the budget race goes through both); Ray sized by the app, not the caller.
            "ray": {**base.get("ray", {}), "num_cpus": None, "gateway_replicas": 2, "health_check_period_s": 2.0},
            "cache": {"response_cache_url": self.proxy.url},
            "sla": {"enabled": True, "policy_path": str(policy_path), "budget_url": self.proxy.url},
            "server": {"api_keys": [OPERATOR_KEY]},
        }
        for attempt in range(3):  # a port another process took between the pick and Serve's bind
            cfg = load_config({**config, "server": {**config["server"], "host": "127.0.0.1", "port": free_port()}})
            try:
                self.url = serving.start(cfg, wait_ready_s=600)
                return self
            except Exception as exc:
                serving.stop()
                if "Failed to bind" not in str(exc) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        from services.serve import local as serving

        with contextlib.suppress(Exception):
            serving.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------------
    def _post(
        self, path: str, body: Any, key: str | None = TENANT_KEY, timeout: float = 120.0, **kw: Any
    ) -> httpx.Response:
        return httpx.post(
            f"{self.url}{path}",
            json=body,
            headers={**auth_headers(key), **kw.pop("headers", {})},
            timeout=timeout,
            **kw,
        )

    def _get(self, path: str, key: str | None = TENANT_KEY, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=auth_headers(key), timeout=60.0, **kw)

    def _read(self, path: str, key: str, timeout_s: float = 30.0) -> Any:
        """GET ``path`` once the service answers it: right after a Redis fault heals, the load has seen one
        replica answer 200 while another may still hold its breaker open for a moment (a retryable 503, the
        fail-closed contract); a reading waits that out, bounded, instead of failing the scenario on it."""
        deadline = time.monotonic() + timeout_s
        while True:
            resp = self._get(path, key)
            if resp.status_code != 503 or time.monotonic() >= deadline:
                resp.raise_for_status()
                return resp.json()
            time.sleep(0.5)

    def usage(self, key: str, tenant: str) -> dict[str, Any]:
        usage: dict[str, Any] = self._read("/v1/sla", key)["tenants"][tenant]["usage"]
        return usage

    def answer(self, question: str, key: str = TENANT_KEY, **over: Any) -> httpx.Response:
        body = {"model": "auto", "messages": [{"role": "user", "content": question}], "max_tokens": 6, "policy": "none"}
        body.update(over)
        return self._post(CHAT, body, key)

    def wait_answering(self, timeout_s: float | None = None) -> float:
        """Seconds until a normal request answers 200 again."""
        started = time.monotonic()
        deadline = started + (timeout_s or self.settings.recover_s)
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self.answer("Are you there?", max_tokens=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.5)
        raise TimeoutError(f"no 200 within {timeout_s or self.settings.recover_s:g} s")

    def settled(self, key: str, tenant: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The tenant's usage once nothing is reserved any more (in-flight reports settled, lapsed leases
        released), or as it stands when the wait runs out."""
        usage: dict[str, Any] = self._released(lambda: {tenant: self.usage(key, tenant)}, key, timeout_s)[tenant]
        return usage

    def _released(self, read: Callable[[], dict[str, Any]], key: str, timeout_s: float | None) -> dict[str, Any]:
        """``read()`` (usage by tenant) again until none holds a reserved token or the wait runs out; a small
        request each second keeps the router tidying (a decision releases lapsed leases)."""
        deadline = time.monotonic() + (timeout_s or self.settings.lease_s + 30)
        usage = read()
        while any(u["reserved_tokens"] for u in usage.values()) and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                self.answer("Anything left to settle?", key, max_tokens=1)
            time.sleep(1.0)
            usage = read()
        return usage

    def _load(self) -> Load:
        return Load(self.url, clients=self.settings.clients, recover_s=self.settings.recover_s)

    def final_usage(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Every tenant's usage once nothing is held any more (or as it stands when the wait runs out): what
        is still reserved after every report settled and every lapsed lease was released is leaked."""

        def read() -> dict[str, Any]:
            tenants = self._read("/v1/sla", OPERATOR_KEY)["tenants"]
            return {name: t["usage"] for name, t in tenants.items() if "usage" in t}

        return self._released(read, TENANT_KEY, timeout_s)

    # -- scenarios ----------------------------------------------------------------------------------
    def bad_inputs(self) -> dict[str, Any]:
        """Every battery case, a normal request after each ten."""
        rows: list[dict[str, Any]] = []
        normal_failures = []
        with httpx.Client(timeout=120.0) as http:
            for n, group in enumerate(battery.batches(battery.cases())):
                for case in group:
                    status, code = _send(http, self.url, case)
                    rows.append(
                        {
                            "name": case.name,
                            "kind": case.kind,
                            "status": status,
                            "code": code,
                            "expected": sorted(case.expect),
                            "ok": status in case.expect,
                        }
                    )
                status, code = _send(http, self.url, battery.normal_request())
                if status != 200:
                    normal_failures.append({"after_batch": n, "status": status, "code": code})
        return {
            "tried": len(rows),
            "kinds": dict(Counter(r["kind"] for r in rows)),
            "five_xx": sum(1 for r in rows if r["status"] >= 500),
            "unexpected": [r for r in rows if not r["ok"]],
            "normal_request_failures": normal_failures,
            "cases": rows,
        }

    def hostile_waits(self) -> dict[str, Any]:
        """For each expensive kind of hostile request (a pattern whose state machine explodes, a schema whose
        references fan out, an embeddings request at its token budget, an upload of as many documents as one
        may hold), sent by one tenant: the small requests another tenant sent while it ran (a one-line
        embedding and a two-token chat, one after the other) and the worst time one of them took."""
        from concurrent.futures import ThreadPoolExecutor

        words = "bridges rivers ferries " * 90  # 256 embedder tokens once truncated
        jsonl = "".join(
            f'{{"id": "hostile-{i}", "text": "hostile line {i}"}}\n' for i in range(self.settings.hostile_jsonl_docs)
        )
        pattern = {"type": "object", "properties": {"p": {"type": "string", "pattern": battery.EXPLODING_PATTERN}}}
        kinds: dict[str, Case] = {
            "exploding_pattern": Case("pattern", "schemas", "POST", CHAT, frozenset({400}),
                                      battery._chat(response_format=battery._schema(pattern))),
            "reference_fan_out": Case("fan-out", "schemas", "POST", CHAT, frozenset({400}),
                                      battery._chat(response_format=battery._schema(battery.fan_out_schema()))),
            "embeddings_at_budget": Case("embeddings", "sizes", "POST", "/v1/embeddings", frozenset({200}),
                                         {"model": "auto", "input": [words] * self.settings.hostile_embed_inputs}),
            "upload_at_document_cap": Case("upload", "sizes", "POST", DOCS, frozenset({200}),
                                           content=jsonl.encode("utf-8"),
                                           headers={"content-type": "application/jsonl"}),
        }  # fmt: skip
        small = [
            Case("small embedding", "normal", "POST", "/v1/embeddings", frozenset({200}),
                 {"model": "auto", "input": "Who maintains the bridge?"}, key=OTHER_KEY),
            Case("small chat", "normal", "POST", CHAT, frozenset({200}), battery._chat(max_tokens=2), key=OTHER_KEY),
        ]  # fmt: skip
        out: dict[str, Any] = {}
        with httpx.Client(timeout=600.0) as http, ThreadPoolExecutor(max_workers=1) as pool:
            for name, hostile in kinds.items():
                started = time.monotonic()
                running = pool.submit(_send, http, self.url, hostile)
                waits: list[float] = []
                failed = 0
                while not running.done():
                    for case in small:
                        t0 = time.monotonic()
                        status, _ = _send(http, self.url, case)
                        waits.append(time.monotonic() - t0)
                        failed += status != 200
                status, code = running.result()
                out[name] = {
                    "status": status,
                    "code": code,
                    "ok": status in hostile.expect,
                    "hostile_s": round(time.monotonic() - started, 2),
                    "small_requests": len(waits),
                    "small_failed": failed,
                    "worst_small_s": round(max(waits), 3) if waits else None,
                    "median_small_s": round(sorted(waits)[len(waits) // 2], 3) if waits else None,
                }
        return out

    def redis_faults(self) -> dict[str, Any]:
        assert self.proxy is not None and self.redis is not None
        proxy, redis = self.proxy, self.redis
        hold = self.settings.fault_s
        faults: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
            "refused": (lambda: proxy.set("refuse"), lambda: proxy.set("pass")),
            "blackholed": (lambda: proxy.set("blackhole"), lambda: proxy.set("pass")),
            "delayed_500ms": (lambda: proxy.set("delay", 0.5), lambda: proxy.set("pass")),
            "killed_restarted_from_aof": (redis.kill, lambda: None if redis.start() else None),
        }
        before = self.usage(TENANT_KEY, "acme")
        out = {name: asyncio.run(self._load().under(fault, heal, hold)) for name, (fault, heal) in faults.items()}
        after = self.settled(TENANT_KEY, "acme")
        out["acme_usage"] = {"before": before, "after": after}
        return out

    def replica_kills(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.settings.replicas:
            pids = replica_pids(name)
            if not pids:
                out[name] = {"error": "no replica process found"}
                continue
            victim = pids[0]

            def kill(pid: int = victim) -> None:
                os.kill(pid, signal.SIGKILL)

            out[name] = asyncio.run(self._load().under(kill, lambda: None, 0))
            out[name]["killed_pid"] = victim
            self.wait_answering()

            # Serve replaces the replica; the next kill waits until this one's replacement is up.
            def replaced(deployment: str = name, count: int = len(pids)) -> bool:
                return len(replica_pids(deployment)) >= count

            _wait_for(replaced, self.settings.recover_s)
        out["acme_usage_after"] = self.settled(TENANT_KEY, "acme")
        return out

    def ingest_under_retriever_kills(self, kills: int = 3) -> dict[str, Any]:
        """Nonce documents uploaded one at a time while the retriever replica is killed ``kills`` times;
        then each one acknowledged must be found."""
        acked: list[str] = []
        statuses: Counter[str] = Counter()
        nonce = uuid.uuid4().hex[:8]
        kill_at = {round((k + 1) * self.settings.ingest_docs / (kills + 1)) for k in range(kills)}
        killed = 0
        for i in range(self.settings.ingest_docs):
            if i in kill_at:
                pids = replica_pids("retriever")
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed += 1
            doc_id = f"chaos-{nonce}-{i}"
            deadline = time.monotonic() + self.settings.recover_s
            while time.monotonic() < deadline:  # a client retries what it was told to retry
                try:
                    resp = self._post(DOCS, {"documents": [{"id": doc_id, "text": f"Chaos nonce {nonce} number {i}."}]})
                    status = resp.status_code
                except httpx.HTTPError:
                    status = 0
                statuses[str(status)] += 1
                if status == 200:
                    acked.append(doc_id)
                    break
                if status not in RETRYABLE:
                    break
                time.sleep(0.5)
        self.wait_answering()
        lost = [d for d in acked if self._get(f"{DOCS}/{d}").status_code != 200]
        return {
            "documents": self.settings.ingest_docs,
            "kills": killed,
            "acknowledged": len(acked),
            "lost": len(lost),
            "lost_ids": lost[:10],
            "statuses": dict(statuses),
        }

    def store_writers(self) -> dict[str, Any]:
        return kill_writers(self.workdir / "writer-index", self.settings.writer_kills)

    def streams_closed_early(self) -> dict[str, Any]:
        """Streams read for 3 events, then closed: each is charged what the model ran, nothing stays held."""
        before = self.usage("k-streamer", "streamer")["spent_tokens"]

        async def one(i: int, http: httpx.AsyncClient) -> int:
            body = {
                "model": "auto",
                "messages": [{"role": "user", "content": f"Count slowly to fifty, run {i}."}],
                "max_tokens": 64,
                "policy": "none",
                "stream": True,
            }
            events = 0
            async with http.stream("POST", f"{self.url}{CHAT}", json=body, headers=auth_headers("k-streamer")) as resp:
                if resp.status_code != 200:
                    return -resp.status_code
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        events += 1
                        if events == 3:
                            break  # the client leaves
            return events

        async def run() -> list[int]:
            async with httpx.AsyncClient(timeout=120.0) as http:
                gate = asyncio.Semaphore(3)

                async def gated(i: int) -> int:
                    async with gate:
                        return await one(i, http)

                return await asyncio.gather(*(gated(i) for i in range(self.settings.streams)))

        events = asyncio.run(run())
        after = self.settled("k-streamer", "streamer")
        return {
            "streams": self.settings.streams,
            "closed_after_3_events": sum(1 for e in events if e == 3),
            "refused": [e for e in events if e < 0],
            "charged_tokens": after["spent_tokens"] - before,
            "reserved_after": after["reserved_tokens"],
        }

    def metering(self, n: int = 6) -> dict[str, Any]:
        """Tokens charged against tokens delivered (each response's usage), cached answers included."""
        before = self.usage("k-meter", "meter")["spent_tokens"]
        delivered = 0
        hits = 0
        for i in range(n):
            question = "What does the meter read?" if i % 3 == 2 else f"Meter question {i} {uuid.uuid4().hex[:6]}?"
            resp = self._post("/v1/qa", {"question": question, "policy": "none", "max_tokens": 8}, "k-meter")
            resp.raise_for_status()
            rec = resp.json()
            delivered += rec["usage"]["total_tokens"]
            hits += rec["cache"]["response"] == "hit"
        after = self.settled("k-meter", "meter")
        return {
            "requests": n,
            "cache_hits": hits,
            "tokens_delivered": delivered,
            "tokens_charged": after["spent_tokens"] - before,
            "reserved_after": after["reserved_tokens"],
        }

    def budget_race(self) -> dict[str, Any]:
        """``race_requests`` requests at once, spread by Serve over the 2 gateway replicas, against a budget
        of three worst cases."""

        async def run() -> list[tuple[int, str | None]]:
            limits = httpx.Limits(max_connections=self.settings.race_requests)
            async with httpx.AsyncClient(timeout=300.0, limits=limits) as http:

                async def one(i: int) -> tuple[int, str | None]:
                    body = {
                        "model": "auto",
                        "messages": [{"role": "user", "content": f"Race {i}: hello?"}],
                        "max_tokens": 4,
                        "policy": "none",
                    }
                    try:
                        resp = await http.post(f"{self.url}{CHAT}", json=body, headers=auth_headers("k-race"))
                    except httpx.HTTPError as exc:
                        return 0, type(exc).__name__
                    return resp.status_code, error_code(resp)

                return list(await asyncio.gather(*(one(i) for i in range(self.settings.race_requests))))

        answers = asyncio.run(run())
        after = self.settled("k-race", "race")
        return {
            "requests": len(answers),
            "statuses": dict(sorted(Counter(str(s) for s, _ in answers).items())),
            "codes": dict(sorted(Counter(c for _, c in answers if c).items())),
            "budget_tokens": RACE_BUDGET,
            "spent_tokens": after["spent_tokens"],
            "overspend": max(0, after["spent_tokens"] - RACE_BUDGET),
            "reserved_after": after["reserved_tokens"],
        }

    def cross_tenant(self) -> dict[str, Any]:
        """globex tries to read, list, overwrite, delete and learn from acme's document and cached answer."""
        nonce = uuid.uuid4().hex[:10]
        doc_id = f"acme-secret-{nonce}"
        text = f"The acme vault code is {nonce}. It opens the acme vault."
        self._post(DOCS, {"documents": [{"id": doc_id, "title": "Acme vault", "text": text}]}).raise_for_status()
        question = f"What is the acme vault code {nonce}?"
        self._post("/v1/qa", {"question": question, "policy": "single", "max_tokens": 8}).raise_for_status()
        probes: dict[str, bool] = {}
        probes["get by id"] = self._get(f"{DOCS}/{doc_id}", OTHER_KEY).status_code == 200
        listed = self._get(DOCS, OTHER_KEY, params={"limit": "1000"}).json().get("data", [])
        probes["listed"] = any(d.get("id") == doc_id for d in listed)
        over = self._post(DOCS, {"documents": [{"id": doc_id, "text": "globex was here"}]}, OTHER_KEY)
        probes["overwrite"] = (
            over.status_code == 200 and self._get(f"{DOCS}/{doc_id}").json().get("title") != "Acme vault"
        )
        # Ids are scoped to a namespace: globex's write above made a document of its own under acme's id, and
        # its delete removes that one. The probe is whether acme's is gone.
        httpx.delete(f"{self.url}{DOCS}/{doc_id}", headers=auth_headers(OTHER_KEY), timeout=60)
        probes["delete"] = self._get(f"{DOCS}/{doc_id}").status_code != 200
        rec = self._post("/v1/qa", {"question": question, "policy": "single", "max_tokens": 8}, OTHER_KEY).json()
        probes["cited"] = any(nonce in c.get("text", "") for c in rec.get("citations", []))
        probes["cache hit"] = rec.get("cache", {}).get("response") == "hit"
        probes["answer leaks the code"] = nonce in rec.get("answer", "")
        still = self._get(f"{DOCS}/{doc_id}").status_code == 200
        return {"probes": probes, "succeeded": sum(probes.values()), "owner_still_has_it": still}

    def tier_downgrade(self) -> dict[str, Any]:
        """acme (standard, 8,192-token cap) picks `batch` (no cap): it gets batch's targets, never a looser cap."""
        resp = self._post(
            "/v1/qa", {"question": "Downgrade me?", "policy": "none", "max_tokens": 4}, headers={"x-sla-tier": "batch"}
        )
        sla = resp.json().get("sla", {}) if resp.status_code == 200 else {}
        looser = self._post(
            "/v1/qa",
            {"question": "Downgrade me?", "policy": "none", "max_tokens": 4},
            headers={"x-sla-tier": "batch", "x-budget-tokens": "9000"},
        )
        return {
            "status": resp.status_code,
            "tier": sla.get("tier"),
            "cap": sla.get("max_tokens_per_request"),
            "looser_cap_status": looser.status_code,
        }

    def midnight(self) -> dict[str, Any]:
        """A reservation made at 23:59:59 UTC and settled after midnight is charged to the day it started, in
        the same Redis the app uses (clock patched in this process)."""
        from unittest import mock

        import router.budgets as budgets
        from router.budgets.redis_ledger import RedisLedger

        assert self.proxy is not None
        ledger = RedisLedger(self.proxy.url, prefix=f"chaos-midnight-{uuid.uuid4().hex[:6]}:")

        def day(key: str) -> Any:
            return mock.patch.object(budgets, "period_key", lambda period, now=None: key)

        async def run() -> dict[str, Any]:
            with day("2026-12-01"):
                await ledger.reserve("late", "t", "day", 100, 0, 1000, None, lease_s=600)  # at 23:59:59
            with day("2026-12-02"):  # past midnight
                await ledger.settle("late", 40, 0)
                new_day = await ledger.usage("t", "day")
            with day("2026-12-01"):
                old_day = await ledger.usage("t", "day")
            return {
                "old_day_spent": old_day.spent_tokens,
                "old_day_reserved": old_day.reserved_tokens,
                "new_day_spent": new_day.spent_tokens,
            }

        return asyncio.run(run())


def _send(http: httpx.Client, url: str, case: Case) -> tuple[int, str | None]:
    body = case.body()
    content: Any = body
    if case.chunked and body is not None:
        content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    try:
        resp = http.request(
            case.method,
            f"{url}{case.path}",
            content=content,
            headers=case.request_headers(),
            params=case.params or None,
        )
    except httpx.HTTPError as exc:
        return 0, type(exc).__name__
    return resp.status_code, error_code(resp)


def replica_pids(deployment: str) -> list[int]:
    """The processes of a deployment's replicas (Ray titles them ``ray::ServeReplica:<app>:<deployment>``)."""
    import psutil

    from services.serve.app import deployment_name
    from services.serve.local import APP_NAME

    name = deployment_name(MODEL) if deployment == "worker" else deployment
    title = f"ServeReplica:{APP_NAME}:{name}"
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            if title in cmd.split() or cmd.startswith(f"ray::{title}"):
                out.append(p.info["pid"])
    return sorted(out)


def _wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False
