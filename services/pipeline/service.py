"""Answering a question: route, (maybe) serve from the response cache, run the retrieval policy,
generate, account. Used by the HTTP gateway and by the library path (`ragyard ask`, `eval`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from cache.response_cache import ResponseCache
from retrieval.answering import Ran, answer_events
from retrieval.documents import Passage
from retrieval.evidence import LineVectors, closest_line
from retrieval.generation import SamplingParams
from retrieval.policies.base import Escalation, PolicyContext, PolicyResult
from retrieval.policies.registry import get_policy
from router.plan import Outcome, RouteDecision, RouteRequest
from services import metrics
from services.config import AppConfig, RetrievalConfig
from services.errors import InvalidRequestError, ServiceUnavailableError
from services.pipeline import telemetry
from services.pipeline.answer_cache import AnswerCache, CacheLookup
from services.pipeline.clients import RetrieverClient, RouterClient, WorkerClient, local_router
from services.pipeline.corpus import CorpusWork
from services.pipeline.jobs import IngestJobs
from services.pipeline.records import (
    Answer,
    AnswerRequest,
    CacheRecord,
    Citation,
    Completion,
    PlanRecord,
    SlaRecord,
    StreamEvent,
    TokenUsage,
    new_id,
    openai_logprobs,
    rounded_timings,
)
from services.pipeline.support import check_support

logger = logging.getLogger(__name__)


class RagService:
    def __init__(
        self,
        config: AppConfig,
        retriever: RetrieverClient,
        workers: dict[str, WorkerClient],
        *,
        router: RouterClient | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.config = config
        self.retriever = retriever
        self.workers = workers
        if router is None:
            from services.deployments.router import RouterService

            router = local_router(RouterService(config))
        self.router = router
        self.cache = cache
        # The response cache on the answer path: exact entries and (cache.semantic) close questions.
        self.answers = AnswerCache(config, cache, retriever)
        self._reports: set[asyncio.Future[Any]] = set()  # SLA reports in flight (kept from the GC)
        # Ingest and the chunk KV the workers compute ahead (services/pipeline/corpus.py).
        self.corpus = CorpusWork(config, retriever, workers, router)
        # Large uploads answered at once and indexed in the background (services/pipeline/jobs.py).
        self.jobs = IngestJobs(config, self.corpus)
        # The closest line's candidates, embedded once each (`retrieval.evidence.LineVectors`).
        self._line_vectors = LineVectors(self._embed_lines)

    # -- planning ------------------------------------------------------------------------------
    async def decide(self, req: AnswerRequest, *, dry_run: bool = False) -> tuple[RouteDecision, SamplingParams]:
        if req.span is None:
            req.span = telemetry.start(
                f"{req.operation} {req.model or 'auto'}", None, **telemetry.request_attributes(req, req.operation)
            )
        try:
            with telemetry.span("route", req.span) as route:
                decision, params = await self._decide(req, dry_run=dry_run)
                telemetry.set_attributes(route, telemetry.plan_attributes(decision))
        except BaseException as exc:
            self.close_span(req, error=exc)
            raise
        return decision, params

    def close_span(
        self, req: AnswerRequest, record: Answer | Completion | None = None, error: BaseException | None = None
    ) -> None:
        """End the request's span, with the response's attributes when there is one."""
        span, req.span = req.span, None
        if span is None:
            return
        if record is not None:
            telemetry.set_attributes(span, telemetry.response_attributes(record))
        telemetry.end(span, error)

    async def _decide(self, req: AnswerRequest, *, dry_run: bool = False) -> tuple[RouteDecision, SamplingParams]:
        if req.top_k is not None and req.top_k > self.config.retrieval.max_top_k:
            raise InvalidRequestError(
                f"top_k {req.top_k} is over the limit of {self.config.retrieval.max_top_k}", param="top_k"
            )
        embedding = None
        if await self.router.needs_embedding(req.policy, req.model):
            embedding = await self.retriever.embed(req.question.text)
        decision = await self.router.route(
            RouteRequest(
                question=req.question.text,
                embedding=embedding,
                model=req.model,
                policy=req.policy,
                top_k=req.top_k,
                max_tokens=req.max_tokens,
                # A cached answer has no logprobs to give.
                cacheable=req.temperature == 0.0 and req.logprobs is None,
                sla=req.sla,
                dry_run=dry_run,
            )
        )
        limit = self.config.model(decision.plan.model).max_tokens_limit
        if decision.plan.max_tokens > limit:
            await self.finish(decision, None, time.perf_counter())
            raise InvalidRequestError(
                f"max_tokens {decision.plan.max_tokens} is over this model's limit of {limit}", param="max_tokens"
            )
        params = SamplingParams(
            max_tokens=decision.plan.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop,
            seed=req.seed,
            speculative=decision.plan.speculative,
            chunk_cache=decision.plan.chunk_cache,
            priority=decision.sla.priority if decision.sla is not None else 0,
            frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty,
            logprobs=req.logprobs,
            response_format=req.response_format,
            request_id=req.request_id,
        )
        return decision, params

    async def finish(
        self,
        decision: RouteDecision,
        record: Answer | Completion | None,
        started: float,
        ttft_s: float | None = None,
        ran: Ran | None = None,
        parent: Any = None,
    ) -> None:
        """Tell the SLA controller how an admitted request ended (record None: it failed, or its client
        left; ``ran``: the tokens the model ran for it all the same, which are charged). ``parent``: the
        request's span, under which the settlement gets its own."""
        ran = ran or Ran()
        ticket = decision.sla.ticket if decision.sla is not None else None
        with telemetry.span(
            "settle", parent, **{"ragyard.sla.ticket": ticket, "ragyard.sla.admitted": bool(ticket)}
        ) as span:
            if ticket is None:  # no SLA controller, or a dry run: nothing was reserved
                return
            try:
                await self._settle(decision, record, started, ttft_s, ran)
            finally:
                sla = record.sla if isinstance(record, Answer) else None
                budget = sla.budget_after if sla is not None else None
                telemetry.set_attributes(
                    span, {"ragyard.sla.ok": record is not None, "ragyard.sla.budget_after": json.dumps(budget)}
                )

    async def _settle(
        self,
        decision: RouteDecision,
        record: Answer | Completion | None,
        started: float,
        ttft_s: float | None,
        ran: Ran,
    ) -> None:
        assert decision.sla is not None and decision.sla.ticket is not None
        ticket = decision.sla.ticket
        latency = time.perf_counter() - started
        # The cascade's second answer, when it ran: its tokens are billed at its model's price.
        escalation = {
            "escalated_to": ran.escalated_to,
            "escalation_prompt_tokens": ran.escalation_prompt_tokens,
            "escalation_completion_tokens": ran.escalation_completion_tokens,
        }
        outcome = Outcome(
            ok=False,
            latency_s=latency,
            prompt_tokens=ran.prompt_tokens,
            completion_tokens=ran.completion_tokens,
            model=decision.plan.model,
            **escalation,
        )
        if record is not None:
            outcome = Outcome(
                ok=True,
                latency_s=latency,
                # A cached answer reports its original tokens; the policy's cache_charge says what of them is charged.
                prompt_tokens=record.usage.prompt_tokens,
                completion_tokens=record.usage.completion_tokens,
                cache_hit=record.cache.response in ("hit", "semantic"),
                ttft_s=ttft_s if ttft_s is not None else max(0.0, latency - record.timings.get("decode_s", 0.0)),
                model=decision.plan.model,
                **escalation,
            )
        # Shielded: a client that leaves cancels the request's task, and the report must go in all the same
        # (else the reservation waits out its lease and the tokens the model ran are never charged).
        report = asyncio.ensure_future(self.router.finish(ticket, outcome))
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)
        try:
            settled = await asyncio.shield(report)
        except Exception:  # noqa: BLE001 - the answer stands; the ticket expires and releases its reservation
            logger.exception("could not report SLA ticket %s", ticket)
            return
        if isinstance(record, Answer) and record.sla is not None and settled is not None:
            record.sla.budget_after = settled.budget

    def _retrieval_settings(self, model_id: str) -> RetrievalConfig:
        """The retrieval settings a policy runs with for this model (DRAGIN's threshold is per model)."""
        threshold = self.config.dragin_threshold(model_id)
        if threshold == self.config.retrieval.dragin_threshold:
            return self.config.retrieval
        return self.config.retrieval.model_copy(update={"dragin_threshold": threshold})

    def worker_for(self, model_id: str) -> WorkerClient:
        worker = self.workers.get(model_id)
        if worker is None:
            # The router chose a configured model this process serves no worker for (a partial deployment,
            # or an evaluator started with a subset of the models): the service's fault, said plainly.
            raise ServiceUnavailableError(
                f"model {model_id!r} has no worker here (workers: {', '.join(sorted(self.workers))})"
            )
        return worker

    def _context(self, req: AnswerRequest, decision: RouteDecision, params: SamplingParams) -> PolicyContext:
        worker = self.worker_for(decision.plan.model)
        namespaces = list(req.namespaces) if req.namespaces is not None else None

        async def retrieve(query: str, k: int) -> list[Passage]:
            return await self.retriever.search(query, k, namespaces, req.min_generation)

        return PolicyContext(
            retrieve=retrieve,
            generate=worker.generate,
            stream=worker.stream,
            generate_with_signals=worker.generate_with_signals,
            top_k=decision.plan.top_k,
            max_context_tokens=self.config.retrieval.max_context_tokens,
            settings=self._retrieval_settings(decision.plan.model),
            params=params,
            complexity=decision.plan.complexity.model_dump() if decision.plan.complexity else None,
            escalation=self._escalation(decision),
        )

    def _escalation(self, decision: RouteDecision) -> Escalation | None:
        """The cascade's next model, as the policy context carries it (None: the plan has none, or no worker of
        it is here: the first answer stands)."""
        target = decision.plan.escalate_to
        if target is None:
            return None
        worker = self.workers.get(target)
        if worker is None:
            logger.warning("cascade to %s planned, but this process serves no worker of it", target)
            return None
        return Escalation(target, worker.generate, worker.stream, self.config.router.cascade.min_confidence)

    async def plan(self, req: AnswerRequest) -> dict[str, Any]:
        """The plan `answer` would run, with its reasons, without running it (like EXPLAIN): nothing is
        generated, no budget is reserved and no ticket is taken."""
        started = time.perf_counter()
        decision, params = await self.decide(req, dry_run=True)
        self.close_span(req)
        sla = SlaRecord.of(decision)
        return {
            "object": "qa.plan",
            "model": decision.plan.model,
            "plan": PlanRecord.of(decision).model_dump(mode="json"),
            **({"sla": sla.model_dump(mode="json")} if sla is not None else {}),
            "sampling": {"max_tokens": params.max_tokens, "temperature": params.temperature},
            "seconds": round(time.perf_counter() - started, 4),
        }

    # -- answering -----------------------------------------------------------------------------
    async def answer(self, req: AnswerRequest) -> Answer:
        """The answer pipeline collected (the final generation in one piece)."""
        started = time.perf_counter()
        decision, params = await self.decide(req)
        record: Answer | None = None
        ran = req.ran
        error: BaseException | None = None
        try:
            async for ev in self._events(req, decision, params, started, stream=False, ran=ran):
                if ev.record is not None:
                    record = ev.record
            assert record is not None, "the answer pipeline ends with its record"
            return record
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self.finish(decision, record, started, ran=ran, parent=req.span)
            self.close_span(req, record, error)

    async def stream(
        self, req: AnswerRequest, decided: tuple[RouteDecision, SamplingParams] | None = None
    ) -> AsyncIterator[StreamEvent[Answer]]:
        """Text deltas of the final answer as they are generated, then the record. ``decided``: the
        plan, when the caller has made it already (the gateway plans before it sends the 200)."""
        started = time.perf_counter()
        decision, params = decided or await self.decide(req)
        first: float | None = None
        record: Answer | None = None
        error: BaseException | None = None
        ran = req.ran
        try:
            async for ev in self._events(req, decision, params, started, stream=True, ran=ran):
                if first is None:
                    first = time.perf_counter() - started
                if ev.record is not None:
                    record = ev.record
                    await self.finish(decision, record, started, first, ran, parent=req.span)
                yield ev
        except BaseException as exc:
            error = exc
            raise
        finally:
            if record is None:  # failed, or the client went away: charged what the model ran
                await self.finish(decision, None, started, ran=ran, parent=req.span)
            self.close_span(req, record, error)

    async def _events(
        self,
        req: AnswerRequest,
        decision: RouteDecision,
        params: SamplingParams,
        started: float,
        *,
        stream: bool,
        ran: Ran | None = None,
    ) -> AsyncIterator[StreamEvent[Answer]]:
        """The one pipeline behind `answer` and `stream`: the response cache, the policy's answer
        pipeline, the record, the metrics and the cache put, in that order."""
        found = CacheLookup(key=None)
        if self.answers.cache is not None:
            with telemetry.span("cache", req.span, **{"ragyard.cache.operation": "get"}) as lookup:
                found = await self.answers.lookup(req, decision, params)
                lookup.set_attribute("ragyard.cache.result", found.verdict)
                if found.match is not None:
                    lookup.set_attribute("ragyard.cache.similarity", found.match.similarity)
        hit = self.answers.served(found, started, decision) if found.answer is not None else None
        if hit is not None:
            metrics.PLAN_REQUESTS.labels(hit.plan.policy, hit.plan.model, found.verdict).inc()
            yield StreamEvent(text=hit.answer)
            yield StreamEvent(record=hit)
            return
        policy = get_policy(decision.plan.policy)
        ctx = self._context(req, decision, params)
        if req.span is not None:
            ctx = telemetry.traced_context(ctx, req.span, decision.plan.model)
        async for ev in answer_events(policy, req.question, ctx, params, stream=stream, started=started, ran=ran):
            if ev.result is None:
                yield StreamEvent(text=ev.text, logprobs=ev.logprobs)
                continue
            record = self._record(decision, ev.result, found)
            if self.config.retrieval.check_support and ev.result.passages:
                with telemetry.span("support", req.span):
                    record.support = await check_support(self.retriever, record.answer, ev.result.passages)
            note = await self._evidence(req, params, record, ev.result)
            if note:
                yield StreamEvent(text=note)
            self.observe(decision, record, ev.result.timings)
            # Only a whole answer gets here: an engine that fails (or aborts) raises before its result.
            if found.key is not None:
                with telemetry.span("cache", req.span, **{"ragyard.cache.operation": "put"}):
                    await self.answers.store(found, req, record, ev.result.passages)
            yield StreamEvent(record=record)

    async def _evidence(self, req: AnswerRequest, params: SamplingParams, record: Answer, result: PolicyResult) -> str:
        """The passages' closest sentences quoted under the answer (`retrieval.evidence`; under every answer, or one
        that fails a check), added to the record's answer and its trace; what to send after the answer's text (""
        when nothing is added). Not under logprobs (each token of the answer has its own), a response_format (the
        output is the shape) or `style: short` (the bare answer was asked for: the dev files' F1 fell 0.347 ->
        0.283 on 25 HotpotQA questions when 7 short answers got a line)."""
        if not self.config.retrieval.evidence_line or req.question.style != "chat":
            return ""
        if params.logprobs is not None or params.shapes_output:
            return ""
        query = next((str(s["query"]) for s in result.steps if s["step"] == "followup"), None)
        found = await closest_line(
            req.question.text,
            record.answer,
            result.passages,
            unsupported=record.support.unsupported if record.support else 0,
            context=query,
            embed=self._line_vectors,
            always=self.config.retrieval.evidence_when == "always",
            count=self.config.retrieval.evidence_sentences,
        )
        if found is None:
            return ""
        record.answer += found.note
        record.trace.append(found.step())
        return found.note

    async def _embed_lines(self, texts: list[str]) -> np.ndarray:
        """The retriever's embedder over the closest line's query and candidates (one batch call)."""
        return np.asarray((await self.retriever.embed_many(texts))["vectors"], np.float32)

    @staticmethod
    def _record(decision: RouteDecision, result: PolicyResult, found: CacheLookup) -> Answer:
        return Answer(
            id=new_id("qa"),
            answer=result.answer,
            finish_reason=result.finish_reason,
            model=result.answered_by or decision.plan.model,
            citations=[Citation.of(p) for p in result.passages],
            plan=PlanRecord.of(decision),
            timings=rounded_timings(result.timings),
            usage=TokenUsage.of(result.prompt_tokens, result.completion_tokens),
            retrieval_steps=result.retrieval_steps,
            llm_calls=result.llm_calls,
            trace=result.steps,
            cascade=next(
                ({k: v for k, v in s.items() if k != "step"} for s in result.steps if s["step"] == "cascade"), None
            ),
            cache=CacheRecord(response=found.verdict, **(result.prompt_cache or {})),
            speculative=result.speculative or None,
            logprobs=openai_logprobs(result.logprobs),
            sla=SlaRecord.of(decision),
        )

    def observe(self, decision: RouteDecision, record: Answer | Completion, timings: dict[str, float]) -> None:
        policy, model = decision.plan.policy, decision.plan.model
        metrics.PLAN_REQUESTS.labels(policy, model, record.cache.response).inc()
        metrics.PLAN_LATENCY.labels(policy, model).observe(timings["total_s"])
        for stage in ("retrieve", "prefill", "decode"):
            metrics.STAGE_LATENCY.labels(stage).observe(timings[f"{stage}_s"])
        metrics.TTFT.labels(decision.plan.model).observe(timings["ttft_s"])
        for step in record.trace if isinstance(record, Answer) else []:
            if step.get("step") == "cascade":
                cls = decision.plan.complexity.cls if decision.plan.complexity else None
                metrics.CASCADE.labels(model, str(step.get("escalated")).lower(), cls or "none").inc()
        metrics.TOKENS.labels(decision.plan.model, "prompt").inc(record.usage.prompt_tokens)
        metrics.TOKENS.labels(decision.plan.model, "completion").inc(record.usage.completion_tokens)

    async def worker_metrics(self) -> list[str]:
        """The workers' engine metrics (vLLM's families) in Prometheus text form."""
        texts = await asyncio.gather(*(w.metrics_text() for w in self.workers.values()), return_exceptions=True)
        out = []
        for mid, text in zip(self.workers, texts, strict=True):
            if isinstance(text, BaseException):
                logger.warning("metrics of worker %s unavailable: %s", mid, text)
            else:
                out.append(text)
        return out

    async def sla(self, tenant: str | None = None) -> dict[str, Any]:
        return await self.router.sla(tenant)

    async def router_metrics(self) -> str:
        return await self.router.metrics_text()

    async def readiness(self) -> dict[str, Any]:
        """Each component's readiness; raises when one is not reachable."""
        out: dict[str, Any] = {"retriever": await self.retriever.ready(), "router": await self.router.ready()}
        out["workers"] = {mid: await w.ready() for mid, w in self.workers.items()}
        return out


def build_local(config: AppConfig) -> RagService:
    """The library path: every component in this process, no Ray."""
    from services.deployments.retriever import RetrieverService
    from services.deployments.worker import Worker
    from services.pipeline.clients import local_retriever, local_worker

    retriever = local_retriever(RetrieverService(config))
    workers: dict[str, WorkerClient] = {m.id: local_worker(Worker(config, m.id)) for m in config.models}
    return RagService(config, retriever, workers, cache=build_cache(config))


def build_cache(config: AppConfig) -> ResponseCache | None:
    from cache.backends import open_backend

    if not config.cache.enabled:
        return None
    backend = open_backend(
        config.cache.response_cache_url, max_entries=config.cache.max_entries, ttl_s=config.cache.ttl_s
    )
    return ResponseCache(backend, ttl_s=config.cache.ttl_s)
