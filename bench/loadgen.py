"""The load generator of `ragyard bench sla`, run as its own process so its client work never shares
an event loop (or a GIL) with the server it measures.

Modes: open loop (`--rate`: Poisson arrivals for `--duration` seconds, then up to `--drain` seconds
for the answers still out), closed loop (`--concurrency N`: N clients back to back, for capacity)
and burst (`--burst`: every request at once). Each request is a streaming chat completion, so time to
first token is measured where the client sees it.

    python -m bench.loadgen --url URL --requests reqs.jsonl --rate 0.8 --duration 60 --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx


async def one(client: httpx.AsyncClient, url: str, req: dict[str, Any], t0: float, max_tokens: int) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {req['key']}"} if req.get("key") else {}
    headers.update(req.get("headers") or {})
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": req["question"]}],
        "max_tokens": max_tokens,
        "stream": True,
        "stop": ["\n"],
        "style": "short",
        **({"policy": req["policy"]} if req.get("policy") else {}),
    }
    out: dict[str, Any] = {"i": req["i"], "tier": req.get("tier"), "sent_s": round(time.perf_counter() - t0, 4)}
    start = time.perf_counter()
    parts: list[str] = []
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            out["status"] = resp.status_code
            if resp.status_code != 200:
                err = json.loads(await resp.aread()).get("error", {})
                out.update(code=err.get("code"), retry_after=resp.headers.get("retry-after"))
                out["latency_s"] = round(time.perf_counter() - start, 4)
                return out
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    out.update(status=500, code=event["error"].get("code"))
                    break
                choice = (event.get("choices") or [{}])[0]
                text = (choice.get("delta") or {}).get("content")
                if text and "ttft_s" not in out:
                    out["ttft_s"] = round(time.perf_counter() - start, 4)
                if text:
                    parts.append(text)
                ext = event.get("ragyard")
                if ext:
                    plan = ext.get("plan") or {}
                    sla = ext.get("sla") or {}
                    out.update(policy=plan.get("policy"), degraded=sla.get("degraded"))
        out["latency_s"] = round(time.perf_counter() - start, 4)
        out.setdefault("ttft_s", out["latency_s"])
        out["answer"] = "".join(parts).strip()
    except httpx.HTTPError as exc:
        out.update(status=0, code=type(exc).__name__, latency_s=round(time.perf_counter() - start, 4))
    return out


async def run(args: argparse.Namespace, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """The load ``args`` describe, against ``args.url`` (``transport``: another way to reach it than the
    network, e.g. an ASGI app in this process)."""
    reqs = [json.loads(line) for line in Path(args.requests).read_text().splitlines() if line.strip()]
    for n, r in enumerate(reqs):
        r.setdefault("i", n)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    timeout = httpx.Timeout(args.timeout, connect=30.0)
    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout, transport=transport) as client:
        t0 = time.perf_counter()
        if args.burst:
            results = list(await asyncio.gather(*(one(client, args.url, r, t0, args.max_tokens) for r in reqs)))
        elif args.concurrency:
            queue = iter(reqs)
            deadline = t0 + args.duration

            async def loop() -> None:
                while time.perf_counter() < deadline:
                    r = next(queue, None)
                    if r is None:
                        return
                    res = await one(client, args.url, r, t0, args.max_tokens)
                    res["finished_s"] = round(time.perf_counter() - t0, 4)
                    results.append(res)

            await asyncio.gather(*(loop() for _ in range(args.concurrency)))
        else:
            rng = random.Random(args.seed)
            arrivals: list[float] = []
            t = 0.0
            while True:
                t += rng.expovariate(args.rate)
                if t >= args.duration or len(arrivals) >= len(reqs):
                    break
                arrivals.append(t)

            async def later(at: float, r: dict[str, Any]) -> dict[str, Any]:
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                return await one(client, args.url, r, t0, args.max_tokens)

            tasks = [asyncio.create_task(later(at, r)) for at, r in zip(arrivals, reqs, strict=False)]
            done, pending = await asyncio.wait(tasks, timeout=args.duration + args.drain)
            for task in pending:
                task.cancel()
            for task, r in zip(tasks, reqs, strict=False):
                if task in done and not task.cancelled() and task.exception() is None:
                    results.append(task.result())
                else:
                    results.append({"i": r["i"], "tier": r.get("tier"), "status": 0, "code": "not_finished"})
        elapsed = time.perf_counter() - t0
    return {"elapsed_s": round(elapsed, 3), "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("--url", required=True)
    p.add_argument("--requests", required=True, help="JSONL: question, tier, key, headers, policy")
    p.add_argument("--out", required=True)
    p.add_argument("--rate", type=float, help="open loop: mean arrivals per second (Poisson)")
    p.add_argument("--concurrency", type=int, help="closed loop: clients back to back")
    p.add_argument("--burst", action="store_true", help="every request at once")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--drain", type=float, default=120.0, help="open loop: seconds to wait for answers still out")
    p.add_argument("--timeout", type=float, default=600.0, help="per request")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.rate or args.concurrency or args.burst):
        p.error("one of --rate, --concurrency, --burst is needed")
    out = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
