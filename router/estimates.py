"""Online estimates of each plan's cost, per query class: latency and TTFT as p95 sketches (DDSketch,
1% relative accuracy, over a sliding window), token counts as running means; and the load model that
predicts a new request's queue wait from the requests in flight.

Latencies are learned as *service* times, the time a request would take alone: under processor
sharing (the torch worker interleaves concurrent requests step by step), a request that ran with n
others for dt seconds received dt/n of the worker. The load model integrates exactly that, so the
sketches do not learn the load they are meant to predict.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ddsketch import DDSketch

from router.priors import LatencyPriors


class PlanKey(NamedTuple):
    policy: str
    model: str
    speculative: bool
    chunk_cache: bool


@dataclass
class Estimate:
    latency_s: float  # p95 service time
    median_s: float  # p50 service time (what a job in flight is expected to need)
    ttft_s: float  # p95 time to first token, alone
    prompt_tokens: float
    completion_tokens: float
    observations: int
    source: str  # "class", "plan", or a prior: "prior", "prior:slowest", "prior:fallback" (router/priors.py)


class _Window:
    """Two sketches that take turns: quantiles come from both, so the window holds between half and
    all of the last `size` observations and old behaviour ages out."""

    def __init__(self, size: int) -> None:
        self.half = max(8, size // 2)
        self.current = DDSketch(relative_accuracy=0.01)
        self.previous: DDSketch | None = None

    def add(self, value: float) -> None:
        if self.current.count >= self.half:
            self.previous, self.current = self.current, DDSketch(relative_accuracy=0.01)
        self.current.add(max(value, 1e-4))

    @property
    def count(self) -> int:
        return int(self.current.count + (self.previous.count if self.previous else 0))

    def quantile(self, q: float) -> float:
        merged = DDSketch(relative_accuracy=0.01)
        merged.merge(self.current)
        if self.previous is not None:
            merged.merge(self.previous)
        value = merged.get_quantile_value(q)
        return float(value) if value is not None else 0.0


@dataclass
class _Stats:
    window: int
    latency: _Window = field(init=False)
    ttft: _Window = field(init=False)
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.latency = _Window(self.window)
        self.ttft = _Window(self.window)

    def add(self, latency_s: float, ttft_s: float, prompt: int, completion: int) -> None:
        self.latency.add(latency_s)
        self.ttft.add(ttft_s)
        self.n += 1
        # Exponential means: recent behaviour counts most once a plan has history.
        alpha = max(1.0 / self.n, 0.05)
        self.prompt_tokens += alpha * (prompt - self.prompt_tokens)
        self.completion_tokens += alpha * (completion - self.completion_tokens)


class Estimator:
    def __init__(self, *, window: int = 512, min_observations: int = 3, priors: LatencyPriors | None = None) -> None:
        self.window = window
        self.min_observations = min_observations
        # What a plan is assumed to cost until it has been observed (router/priors.py).
        self.priors = priors or LatencyPriors({})
        self._stats: dict[tuple[PlanKey, str | None], _Stats] = {}

    def observe(
        self, key: PlanKey, cls: str | None, latency_s: float, ttft_s: float, prompt: int, completion: int
    ) -> None:
        for k in ((key, cls), (key, None)) if cls is not None else ((key, None),):
            stats = self._stats.get(k)
            if stats is None:
                stats = self._stats[k] = _Stats(self.window)
            stats.add(latency_s, ttft_s, prompt, completion)

    def predict(self, key: PlanKey, cls: str | None) -> Estimate:
        for k, source in (((key, cls), "class"), ((key, None), "plan")):
            stats = self._stats.get(k)
            if stats is not None and stats.n >= self.min_observations and (k[1] is not None or source == "plan"):
                return Estimate(
                    latency_s=stats.latency.quantile(0.95),
                    median_s=stats.latency.quantile(0.5),
                    ttft_s=stats.ttft.quantile(0.95),
                    prompt_tokens=stats.prompt_tokens,
                    completion_tokens=stats.completion_tokens,
                    observations=stats.n,
                    source=source,
                )
        prior, source = self.priors.get(key.model, key.policy)
        return Estimate(
            latency_s=prior["latency_s"],
            median_s=prior["p50_s"],
            ttft_s=prior["ttft_s"],
            prompt_tokens=prior["prompt_tokens"],
            completion_tokens=prior["completion_tokens"],
            observations=0,
            source=source,
        )

    def table(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for (key, cls), s in sorted(self._stats.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            out.append(
                {
                    "plan": f"{key.policy}/{key.model}" + ("+spec" if key.speculative else ""),
                    "class": cls,
                    "n": s.n,
                    "latency_p95_s": round(s.latency.quantile(0.95), 3),
                    "ttft_p95_s": round(s.ttft.quantile(0.95), 3),
                    "tokens_mean": round(s.prompt_tokens + s.completion_tokens, 1),
                }
            )
        return out


@dataclass
class Job:
    id: int
    model: str
    priority: int
    service_s: float  # predicted service time (the plan's median)
    started: float
    deadline: float = float("inf")  # started + the request's latency target
    attained: float = 0.0


class LoadModel:
    """Fluid model of the work in flight per model pool (`servers` replicas).

    A model in ``strict_priority`` (the torch engine: its step lock serves higher SLA priorities first)
    gives its servers to the highest priority in flight, shared equally within it; lower priorities wait.
    Other models (vLLM batches without priorities) share their servers equally among all jobs."""

    def __init__(
        self,
        servers: dict[str, int],
        *,
        strict_priority: set[str] | frozenset[str] = frozenset(),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.servers = dict(servers)
        self.strict = set(strict_priority)
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._clock = clock or time.monotonic
        self._last = self._clock()

    def advance(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        dt = max(0.0, now - self._last)
        self._last = now
        if dt == 0 or not self.jobs:
            return
        by_model: dict[str, list[Job]] = {}
        for job in self.jobs.values():
            by_model.setdefault(job.model, []).append(job)
        for model, jobs in by_model.items():
            free = float(self.servers.get(model, 1))
            levels = sorted({j.priority for j in jobs}, reverse=True) if model in self.strict else [None]
            for level in levels:
                group = [j for j in jobs if level is None or j.priority == level]
                share = min(1.0, free / len(group))
                for job in group:
                    job.attained += dt * share
                free -= share * len(group)
                if free <= 1e-9:
                    break

    def remaining(self, job: Job) -> float:
        # A job past its prediction is assumed to be nearly done, not finished.
        return max(0.1 * job.service_s, job.service_s - job.attained)

    def _delay(self, model: str, other: float, other_priority: int, own: float, priority: int | None) -> float:
        """How much `other` seconds of work at `other_priority` delay `own` seconds of work at `priority`:
        all of it (served first), a fair share (min of the two), or nothing (served after)."""
        if priority is None or model not in self.strict or other_priority == priority:
            return min(other, own)
        return other if other_priority > priority else 0.0

    def wait(
        self,
        model: str,
        service_s: float,
        *,
        priority: int | None = None,
        extra: float = 0.0,
        extra_priority: int | None = None,
    ) -> float:
        """Extra seconds a new job of `service_s` (and `priority`) on `model` would take because of the jobs
        in flight, plus a hypothetical job of `extra` seconds (and `extra_priority`, default the same)."""
        servers = self.servers.get(model, 1)
        delay = sum(
            self._delay(model, self.remaining(j), j.priority, service_s, priority)
            for j in self.jobs.values()
            if j.model == model
        )
        if extra:
            xp = extra_priority if extra_priority is not None else priority
            delay += self._delay(model, extra, xp if xp is not None else 0, service_s, priority)
        return delay / servers

    def backlog(self, model: str) -> float:
        servers = self.servers.get(model, 1)
        return sum(self.remaining(j) for j in self.jobs.values() if j.model == model) / servers

    def finish_in(self, job: Job, *, extra: float = 0.0, extra_priority: int | None = None) -> float:
        """Seconds until `job` ends (plus a new job of `extra` seconds and `extra_priority`, default the job's)."""
        r = self.remaining(job)
        total = sum(
            self._delay(job.model, self.remaining(k), k.priority, r, job.priority)
            for k in self.jobs.values()
            if k.model == job.model
        )
        if extra:
            xp = job.priority if extra_priority is None else extra_priority
            total += self._delay(job.model, extra, xp, r, job.priority)
        return total / self.servers.get(job.model, 1)

    def now(self) -> float:
        return self._clock()

    def admit(self, model: str, priority: int, service_s: float, target_s: float = float("inf")) -> Job:
        self.advance()
        now = self._clock()
        job = Job(next(self._ids), model, priority, service_s, now, deadline=now + target_s)
        self.jobs[job.id] = job
        return job

    def finish(self, job_id: int) -> Job | None:
        self.advance()
        return self.jobs.pop(job_id, None)

    def expire(self, older_than_s: float) -> list[Job]:
        now = self._clock()
        stale = [j for j in self.jobs.values() if now - j.started > older_than_s]
        for j in stale:
            self.jobs.pop(j.id, None)
        return stale
