"""The routers' common view of the work in flight and of how far off their predictions run, in Redis, so several
router replicas admit and shed as one.

Each admitted request is a *job record* under its ticket id (model, priority, predicted service seconds, latency
target, when it was admitted, which router admitted it); every router reads all records before it decides and
counts the others' jobs in its load model as its own. A request ends at whichever router the gateway's report
reaches: that router settles the budget (the ledger is shared already), removes the record and hands the
outcome to the admitting router's inbox, which learns from it (its estimator, its calibration, its SLO
counts) on its next sync. Observed / predicted latency ratios go to one shared list, so every router scales its
predictions by the same calibration.

Redis being down degrades this to each router's own view (it was the only view before); it never refuses a
request: the budget ledger, which is fail-closed, guards the money."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

from cache.errors import BackendUnavailableError
from core.redis_client import Guard, LoopClients, async_client
from router.estimates import LoadModel

logger = logging.getLogger(__name__)

# A job record lives at most this long (a gateway that died never reports; the local load model drops its
# own jobs after the same time), and at least EXPIRY_FLOOR_S or four times its latency target when that is longer:
# a job of a gateway that died must not weigh on every router for a quarter of an hour.
JOB_TTL_S = 900.0
EXPIRY_FLOOR_S = 120.0
# Shared calibration ratios kept (newest), and how often a router re-reads the view at most.
RATIOS_KEPT = 400
SYNC_EVERY_S = 0.1
# Outcomes handed over per sync at most.
INBOX_BATCH = 256

# KEYS: jobs hash, expiry zset. ARGV: now. Drops lapsed records, returns every record.
_VIEW = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, t in ipairs(lapsed) do redis.call('HDEL', KEYS[1], t) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: jobs hash, expiry zset. ARGV: ticket, outcome JSON, inbox key prefix. Removes the record and puts the
# outcome in its router's inbox; returns that router's id ('' when the record is gone: expired or handed over).
_HAND_OVER = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return '' end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local router = cjson.decode(record)['router']
redis.call('RPUSH', ARGV[3] .. router, cjson.encode({ticket = ARGV[1], outcome = ARGV[2]}))
redis.call('EXPIRE', ARGV[3] .. router, 3600)
return router
"""


@dataclass
class View:
    """What one sync read: every job record by ticket, this router's handed-over outcomes, and the shared
    calibration ratios as (seconds ago, priority, ratio)."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ratios: list[tuple[float, int, float]] = field(default_factory=list)


class SharedLoad:
    def __init__(self, url: str, *, prefix: str = "ragyard:load:", router_id: str | None = None) -> None:
        self.router_id = router_id or uuid.uuid4().hex[:12]
        self.prefix = prefix
        self.guard = Guard("load view (redis)", BackendUnavailableError)
        self._keys = [prefix + "jobs", prefix + "expiry"]
        self._inbox = prefix + "inbox:"

        def build() -> tuple[Any, Any, Any]:
            client = async_client(url, retries=1)
            return client, client.register_script(_VIEW), client.register_script(_HAND_OVER)

        self._clients = LoopClients(build)
        self._warned_at = 0.0

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at > 30.0:
            self._warned_at = now
            logger.warning("shared load view: %s failed (%s); this router decides on its own view meanwhile", what, exc)

    async def publish(
        self, ticket: str, *, model: str, priority: int, service_s: float, target_s: float, predicted_s: float
    ) -> None:
        now = time.time()
        record = {
            "router": self.router_id,
            "model": model,
            "priority": priority,
            "service_s": service_s,
            "target_s": target_s if target_s != float("inf") else None,
            "predicted_s": predicted_s,
            "at": now,
        }
        client, _, _ = self._clients.get()

        async def write() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(self._keys[0], ticket, json.dumps(record))
                lasts = JOB_TTL_S if target_s == float("inf") else min(JOB_TTL_S, max(EXPIRY_FLOOR_S, 4 * target_s))
                pipe.zadd(self._keys[1], {ticket: now + lasts})
                await pipe.execute()

        try:
            await self.guard.acall(write)
        except BackendUnavailableError as exc:
            self._warn("publishing a job", exc)

    async def retract(self, ticket: str | None, ratios: Sequence[tuple[int, float, float]] = ()) -> None:
        """This router's own job ended here (``ticket``; None: none), and what it learned: each (priority, observed
        seconds, predicted seconds) goes to the shared calibration. One round trip for both."""
        now = time.time()
        entries = [json.dumps([now, p, o / e]) for p, o, e in ratios if e > 0]
        if ticket is None and not entries:
            return
        client, _, _ = self._clients.get()

        async def write() -> None:
            async with client.pipeline(transaction=True) as pipe:
                if ticket is not None:
                    pipe.hdel(self._keys[0], ticket)
                    pipe.zrem(self._keys[1], ticket)
                if entries:
                    pipe.rpush(self.prefix + "ratios", *entries)
                    pipe.ltrim(self.prefix + "ratios", -RATIOS_KEPT, -1)
                await pipe.execute()

        try:
            await self.guard.acall(write)
        except BackendUnavailableError as exc:
            self._warn("retracting a job", exc)

    async def hand_over(self, ticket: str, outcome: dict[str, Any]) -> str | None:
        """Another router's job ended here: remove its record and send it the outcome. Its id, or None."""
        _, _, script = self._clients.get()
        try:
            router = await self.guard.acall(
                lambda: script(keys=self._keys, args=[ticket, json.dumps(outcome), self._inbox])
            )
        except BackendUnavailableError as exc:
            self._warn("handing over an outcome", exc)
            return None
        router = router.decode() if isinstance(router, bytes) else str(router or "")
        return router or None

    async def sync(self) -> View | None:
        """The shared view now, or None when Redis does not answer."""
        client, view_script, _ = self._clients.get()
        now = time.time()

        async def read() -> tuple[Any, Any, Any]:
            records = await view_script(keys=self._keys, args=[now])
            async with client.pipeline(transaction=True) as pipe:
                pipe.lrange(self._inbox + self.router_id, 0, INBOX_BATCH - 1)
                pipe.ltrim(self._inbox + self.router_id, INBOX_BATCH, -1)
                pipe.lrange(self.prefix + "ratios", 0, -1)
                done, _, ratios = await pipe.execute()
            return records, done, ratios

        try:
            records, done, ratios = await self.guard.acall(read)
        except BackendUnavailableError as exc:
            self._warn("reading the view", exc)
            return None
        view = View()
        for i in range(0, len(records), 2):
            ticket = records[i].decode() if isinstance(records[i], bytes) else str(records[i])
            view.jobs[ticket] = json.loads(records[i + 1])
        for raw in done:
            item = json.loads(raw)
            view.done.append((item["ticket"], json.loads(item["outcome"])))
        for raw in ratios:
            at, priority, ratio = json.loads(raw)
            view.ratios.append((max(0.0, now - float(at)), int(priority), float(ratio)))
        return view


def merge_foreign_jobs(
    load: LoadModel, foreign: dict[str, int], records: dict[str, dict[str, Any]], *, own: Container[str], router_id: str
) -> None:
    """Make ``load`` count the other routers' jobs in ``records`` (ticket -> job record): add the new ones, drop
    those that ended. ``foreign`` maps their tickets to job ids in ``load`` and is kept current; ``own`` are this
    router's tickets (already in ``load``)."""
    remote = {t: r for t, r in records.items() if t not in own}
    for t in [t for t in foreign if t not in remote]:
        load.finish(foreign.pop(t))
    for t, r in remote.items():
        if t in foreign or r.get("router") == router_id:
            continue  # known, or this router's own job that ended elsewhere (its outcome is in its inbox)
        elapsed = max(0.0, time.time() - float(r["at"]))
        target = r.get("target_s")
        job = load.admit(r["model"], int(r["priority"]), float(r["service_s"]), math.inf if target is None else target)
        # An estimate: the time it has run at a fair share of its model's servers.
        job.started -= elapsed
        job.deadline -= elapsed
        servers = load.servers.get(job.model, 1)
        sharing = sum(1 for j in load.jobs.values() if j.model == job.model)
        job.attained = min(job.service_s, elapsed * min(1.0, servers / max(1, sharing)))
        foreign[t] = job.id
