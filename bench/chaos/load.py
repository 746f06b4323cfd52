"""The load a fault is measured under: ``clients`` concurrent clients asking questions (half streamed, a
third repeats that the response cache answers, a quarter with retrieval) and a /healthz poller; a fault is
applied and healed in the middle, and `summarise` reads its figures from what the clients saw."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.chaos.battery import CHAT, TENANT_KEY

# Statuses a client is told to retry: 429 and 503 carry Retry-After; 0 is a connection that broke.
RETRYABLE = {0, 429, 503}


@dataclass
class Sample:
    started: float
    ended: float
    status: int
    code: str | None = None
    stream: bool = False
    outcome: str = ""  # streams: complete, error_event, cut


def auth_headers(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(samples: list[Sample], *, window: tuple[float, float], recovered_from: float) -> dict[str, Any]:
    """The figures of one fault: statuses and latencies of the requests it met (in flight at some moment
    while it lasted: started before its end, ended after its start), seconds from its end to the first 200
    of a request started after it, and what no client should see."""
    inside = [s for s in samples if s.started < window[1] and s.ended > window[0]]
    latencies = [s.ended - s.started for s in inside]
    first = min((s.ended for s in samples if s.status == 200 and s.started >= recovered_from), default=None)
    return {
        "requests": len(inside),
        "statuses": dict(sorted(Counter(str(s.status) for s in inside).items())),
        "codes": dict(sorted(Counter(s.code for s in inside if s.code).items())),
        "streams": dict(sorted(Counter(s.outcome for s in inside if s.stream and s.status == 200).items())),
        "p50_s": None if not latencies else round(statistics.median(latencies), 3),
        "p95_s": None if not latencies else round(_percentile(latencies, 0.95) or 0.0, 3),
        "seconds_to_first_200": None if first is None else round(max(0.0, first - recovered_from), 2),
        "not_retryable": sum(1 for s in inside if s.status >= 500 and s.status not in RETRYABLE),
        # Of those, the requests already in flight when the fault began (a replica killed under them).
        "not_retryable_in_flight": sum(
            1 for s in inside if s.status >= 500 and s.status not in RETRYABLE and s.started < window[0]
        ),
    }


class Load:
    def __init__(self, url: str, *, clients: int, recover_s: float) -> None:
        self.url = url
        self.clients = clients
        self.recover_s = recover_s

    async def _client(self, n: int, stop: asyncio.Event, samples: list[Sample]) -> None:
        limits = httpx.Limits(max_connections=2)
        async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
            i = 0
            while not stop.is_set():
                i += 1
                stream = i % 2 == 0
                # Every third question repeats (response-cache hits); the rest are new.
                question = (
                    "What is Ragyard?" if i % 3 == 0 else f"Load {n}-{i} {uuid.uuid4().hex[:6]}: what is Ragyard?"
                )
                body = {
                    "model": "auto",
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 6,
                    "policy": "single" if i % 4 == 1 else "none",
                    "stream": stream,
                }
                started = time.monotonic()
                sample = Sample(started, started, 0, stream=stream)
                try:
                    if stream:
                        await self._stream(http, body, sample)
                    else:
                        resp = await http.post(f"{self.url}{CHAT}", json=body, headers=auth_headers(TENANT_KEY))
                        sample.status = resp.status_code
                        sample.code = error_code(resp)
                except httpx.HTTPError as exc:
                    sample.code = type(exc).__name__
                    sample.outcome = sample.outcome or ("cut" if stream else "")
                sample.ended = time.monotonic()
                samples.append(sample)
                if sample.status != 200:
                    await asyncio.sleep(0.2)  # a failing server is not hammered in a tight loop

    async def _stream(self, http: httpx.AsyncClient, body: dict[str, Any], sample: Sample) -> None:
        async with http.stream("POST", f"{self.url}{CHAT}", json=body, headers=auth_headers(TENANT_KEY)) as resp:
            sample.status = resp.status_code
            if resp.status_code != 200:
                await resp.aread()
                sample.code = error_code(resp)
                return
            sample.outcome = "cut"
            async for line in resp.aiter_lines():
                if line.startswith("data: [DONE]"):
                    if sample.outcome == "cut":
                        sample.outcome = "complete"
                    return
                if line.startswith("data: ") and '"error"' in line:
                    sample.outcome = "error_event"
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        sample.code = json.loads(line[6:])["error"].get("code")

    async def _probe(self, stop: asyncio.Event, samples: list[Sample]) -> None:
        """A cheap tenant call every quarter second (a one-document list: the key and rate-limit checks,
        no model), so every fault meets requests however long the answers take."""
        async with httpx.AsyncClient(timeout=30.0) as http:
            while not stop.is_set():
                started = time.monotonic()
                sample = Sample(started, started, 0)
                try:
                    resp = await http.get(
                        f"{self.url}/v1/documents", params={"limit": "1"}, headers=auth_headers(TENANT_KEY)
                    )
                    sample.status, sample.code = resp.status_code, error_code(resp)
                except httpx.HTTPError as exc:
                    sample.code = type(exc).__name__
                sample.ended = time.monotonic()
                samples.append(sample)
                await asyncio.sleep(0.25)

    async def _health(self, stop: asyncio.Event, worst: list[float]) -> None:
        async with httpx.AsyncClient(timeout=30.0) as http:
            while not stop.is_set():
                started = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(f"{self.url}/healthz")
                worst.append(time.monotonic() - started)
                await asyncio.sleep(0.25)

    async def under(self, fault: Callable[[], None], heal: Callable[[], None], hold_s: float) -> dict[str, Any]:
        """Run the load, apply ``fault`` for ``hold_s`` seconds (0: until it heals by itself, as a killed
        replica does), heal, and keep the load on until a request started after it answers 200."""
        samples: list[Sample] = []
        health: list[float] = []
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(self._client(n, stop, samples)) for n in range(self.clients)]
        tasks.append(asyncio.ensure_future(self._health(stop, health)))
        probes: list[Sample] = []
        tasks.append(asyncio.ensure_future(self._probe(stop, probes)))
        try:
            await asyncio.sleep(1.5)
            t0 = time.monotonic()
            await asyncio.to_thread(fault)
            await asyncio.sleep(hold_s)
            await asyncio.to_thread(heal)
            t1 = time.monotonic()
            deadline = t1 + self.recover_s
            while time.monotonic() < deadline and not any(s.status == 200 and s.started >= t1 for s in samples):
                await asyncio.sleep(0.1)
            t2 = time.monotonic()
        finally:
            stop.set()
            ended = await asyncio.gather(*tasks, return_exceptions=True)
        # A fault that heals by itself lasts until the service answers again.
        window = (t0, t1 if hold_s else t2)
        out = summarise(samples, window=window, recovered_from=t1)
        out["worst_healthz_s"] = round(max(health), 3) if health else None
        probed = summarise(probes, window=window, recovered_from=t1)
        out["probes"] = {k: probed[k] for k in ("requests", "statuses", "codes", "not_retryable")}
        out["load_requests"] = len(samples)
        out["client_errors"] = [repr(e) for e in ended if isinstance(e, BaseException)]
        out["fault_s"] = round(window[1] - window[0], 2)
        return out


def error_code(resp: httpx.Response) -> str | None:
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        return str(resp.json()["error"]["code"])
    return None
