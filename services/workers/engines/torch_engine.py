"""HF transformers on CPU or GPU: the embedded default engine.

The decode loop is ours rather than ``model.generate`` because the worker needs per-stage
timings, stop strings applied to streamed text, fair interleaving of concurrent requests and,
in later work, direct access to the KV cache (chunk-KV reuse, speculative drafts).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from retrieval.generation import (
    FinishReason,
    GenerationChunk,
    GenerationResult,
    GenerationStats,
    SamplingParams,
    SignalResult,
    collect,
)
from services.workers.engines.priority_lock import PriorityLock, run_with_priority
from services.workers.engines.shaping import EnforcerTables, OutputShaper
from services.workers.model_store import resolve_model_path
from services.workers.spec.verify import sample_token
from services.workers.text import TokenizerMixin

if TYPE_CHECKING:
    import torch

    from cache.chunk_reuse import ChunkReuse, Prefilled, ReuseMode
    from services.config import ModelConfig
    from services.workers.spec.decode import SpecSetup, SpecStats

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Threads for the decode steps of one engine: more than the requests a worker replica takes at once.
STEP_THREADS = 64

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class TorchEngine(TokenizerMixin):
    def __init__(self, config: ModelConfig, *, cache_dir: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        path = resolve_model_path(config.path, cache_dir)
        self.model_id = config.id
        self.max_model_len = config.max_model_len
        self.device = torch.device(config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, _DTYPES[config.dtype]))
        self.model: Any = model.to(self.device).eval()
        self.eos_ids = self.end_ids(getattr(self.model.generation_config, "eos_token_id", None))
        self.enforcer_tables = EnforcerTables(self.tokenizer, self.eos_ids)  # built on the first response_format
        self.spec: SpecSetup | None = None
        if config.speculative is not None:
            from services.workers.spec.decode import build_setup

            self.spec = build_setup(
                config.speculative,
                self.model,
                self.device,
                cache_dir,
                target_tokenizer=self.tokenizer,
                target_name=config.id,
            )
        self.chunk_reuse: ChunkReuse | None = None
        if config.chunk_cache.enabled:
            self.chunk_reuse = _build_chunk_reuse(config, self.model, self.tokenizer)
        # One forward pass at a time: concurrent requests interleave step by step instead of
        # fighting over the same cores, the highest priority (SLA tier) first.
        self._lock = PriorityLock()
        # The steps' threads. Each in-flight request's next step waits on the lock in a thread of its own:
        # with asyncio's default pool (min(32, CPUs + 4) threads, 6 here) the steps queued first-come
        # first-served in the pool before they ever reached the lock, so priority could not act, and a
        # higher request's next step could be stuck behind lower ones holding every thread. Blocked
        # threads cost nothing; the worker accepts 32 requests at a time (services/deployments/app.py).
        self._steps = ThreadPoolExecutor(max_workers=STEP_THREADS, thread_name_prefix=f"torch-{config.id}")
        logger.info("torch engine loaded %s from %s on %s", self.model_id, path, self.device)

    def iter_tokens(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        entropies: list[float] | None = None,
        *,
        spec: SpecSetup | None = None,
        spec_stats: SpecStats | None = None,
        prefilled: Prefilled | None = None,
        shaper: OutputShaper | None = None,
    ) -> Generator[tuple[int, float], None, None]:
        """Yield (token id, seconds the forward pass took). Stops at max_tokens or EOS (yielded).
        With ``entropies``, the entropy of each step's distribution is appended to it (the plain loop
        runs then). With ``spec`` (a draft pair) and ``spec_stats``, decoding is speculative. ``prefilled``
        holds the prompt's KV and first logits when chunk-KV reuse computed them. ``shaper`` (penalties, a
        structured-output constraint, logprobs) works on each step's logits, so the plain loop runs then."""
        import torch
        from transformers import DynamicCache

        max_new = self._check_prompt(prompt_ids, params)
        gen: torch.Generator | None = None
        if not params.greedy:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % (2**63)))
        if spec is not None and spec_stats is not None and entropies is None and shaper is None:
            from services.workers.spec.decode import speculative_steps

            yield from speculative_steps(
                self.model,
                self.device,
                self._lock,
                prompt_ids,
                max_new,
                params,
                gen,
                spec,
                self.eos_ids,
                spec_stats,
                prefilled,
            )
            return
        cache = DynamicCache()
        inputs = torch.tensor([prompt_ids], device=self.device)
        for step in range(max_new):
            if step == 0 and prefilled is not None:
                cache, logits, spent = prefilled.cache, prefilled.logits.to("cpu"), prefilled.seconds
            else:
                with self._lock, torch.inference_mode():
                    start = time.perf_counter()
                    # Only the last position's logits are needed: the head over a whole prompt's positions is a
                    # quarter of a 550-token prefill on this CPU (logits_to_keep=1: 1.09 s against 1.47 s, SmolLM2).
                    out = self.model(input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    logits = out.logits[0, -1].to("cpu")
                    spent = time.perf_counter() - start
            if shaper is not None:
                token = sample_token(shaper.process(logits), params, gen)
                shaper.observe(token, logits)
            else:
                token = sample_token(logits, params, gen)
            if entropies is not None:
                logp = torch.log_softmax(logits.float(), dim=-1)
                entropies.append(float(-(logp.exp() * logp).sum()))
            yield token, spent
            if token in self.eos_ids:
                return
            inputs = torch.tensor([[token]], device=self.device)

    def stream_sync(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        spec: SpecSetup | None | bool = True,
        chunks: list[str] | None = None,
        reuse: ReuseMode | None = None,
        fraction: float | None = None,
    ) -> Generator[GenerationChunk, None, None]:
        """The synchronous stream (the library path and the async wrapper both use it).

        ``spec``: True uses the worker's configured draft pair (if any), False or None decodes plainly,
        a ``SpecSetup`` uses that pair (benchmarks compare pairs in one process). ``chunks``: the
        retrieved texts in the prompt, whose stored KV the chunk-KV cache reuses when it is on;
        ``reuse`` (blend, prefix) and ``fraction`` override its mode and recompute fraction (benchmarks)."""
        from services.workers.spec.decode import SpecStats

        started = time.perf_counter()
        prompt_ids = self.encode(prompt)
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        detok = _StopAwareDetokenizer(self.tokenizer, params.stop)
        finish: FinishReason = "length"
        setup = (self.spec if params.speculative else None) if spec is True else (spec or None)
        shaper = (
            OutputShaper(params, self.tokenizer, self.enforcer_tables, self.eos_ids)
            if OutputShaper.needed(params)
            else None
        )
        if shaper is not None:
            # Drafts are verified against unshaped logits: a shaped request decodes plainly.
            setup = None
        spec_stats = SpecStats() if setup is not None else None
        prefilled = None
        if self.chunk_reuse is not None and chunks and params.chunk_cache:
            import torch

            self._check_prompt(prompt_ids, params)
            mode = reuse or "blend"
            # The shared tier (Redis) is read before the step lock and written after it: a slow or dead
            # Redis delays this request alone, never the decode steps of every other.
            fetched = self.chunk_reuse.prefetch(prompt, chunks, mode=mode)
            with self._lock, torch.inference_mode():
                prefilled = self.chunk_reuse.prefill(prompt, chunks, mode=mode, fraction=fraction, fetched=fetched)
            self.chunk_reuse.store.flush_writes()
            prompt_ids = prefilled.prompt_ids
            stats.chunk_cache = prefilled.report
        steps = self.iter_tokens(
            prompt_ids, params, spec=setup, spec_stats=spec_stats, prefilled=prefilled, shaper=shaper
        )

        def piece(
            text: str, finish: FinishReason | None = None, final: GenerationStats | None = None
        ) -> GenerationChunk:
            logprobs = shaper.take() if shaper is not None else None
            return GenerationChunk(text, finish, final, stats.prompt_tokens, stats.completion_tokens, logprobs)

        try:
            for token, spent in steps:
                if stats.completion_tokens == 0 and stats.first_token is None:
                    stats.ttft_s = time.perf_counter() - started
                    stats.first_token = token
                    stats.prefill_s = spent
                    stats.queue_s = max(0.0, stats.ttft_s - spent)
                else:
                    stats.decode_s += spent
                if token in self.eos_ids:
                    finish = "stop"
                    break
                stats.completion_tokens += 1
                delta, stopped = detok.push(token)
                if stopped:
                    finish = "stop"
                    if delta:
                        yield piece(delta)
                    break
                if delta:
                    yield piece(delta)
        finally:
            steps.close()
            if prefilled is not None and prefilled.after is not None:
                with self._lock:
                    prefilled.after()
                assert self.chunk_reuse is not None
                self.chunk_reuse.store.flush_writes()
        if setup is not None and spec_stats is not None:
            stats.speculative = {**setup.describe(), **spec_stats.as_dict()}
        last = piece(detok.flush() if finish == "length" or not detok.stopped else "", finish, stats)
        last.prompt_tokens = last.completion_tokens = 0
        yield last

    async def stream(
        self, prompt: str, params: SamplingParams, chunks: list[str] | None = None
    ) -> AsyncIterator[GenerationChunk]:
        it = self.stream_sync(prompt, params, chunks=chunks)
        done = object()
        step: asyncio.Future[Any] | None = None
        try:
            with self._lock.active(params.priority):
                while True:
                    # Each step runs in a thread: torch releases the GIL, the event loop keeps serving.
                    step = asyncio.ensure_future(self._in_thread(params.priority, next, it, done))
                    # Shielded: if the caller goes away mid-step, the step still ends before the generator
                    # closes.
                    chunk: Any = await asyncio.shield(step)
                    step = None
                    if chunk is done:
                        return
                    yield chunk
        finally:
            if step is not None and not step.done():
                # A thread is inside the generator: close it once that step returns (closing it now raises
                # "generator already executing" and leaves it open).
                step.add_done_callback(lambda _f: asyncio.ensure_future(self._in_thread(0, it.close)))
            else:
                it.close()

    async def generate(self, prompt: str, params: SamplingParams, chunks: list[str] | None = None) -> GenerationResult:
        return await collect(self.stream(prompt, params, chunks))

    def generate_sync(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        spec: SpecSetup | None | bool = True,
        chunks: list[str] | None = None,
        reuse: ReuseMode | None = None,
        fraction: float | None = None,
    ) -> GenerationResult:
        parts, last = [], None
        for chunk in self.stream_sync(prompt, params, spec=spec, chunks=chunks, reuse=reuse, fraction=fraction):
            parts.append(chunk.text)
            last = chunk
        assert last is not None and last.finish_reason is not None
        return GenerationResult("".join(parts), last.finish_reason, last.stats or GenerationStats())

    def generate_with_signals_sync(self, prompt: str, params: SamplingParams) -> SignalResult:
        import torch

        started = time.perf_counter()
        prompt_ids = self.encode(prompt)
        entropies: list[float] = []
        ids: list[int] = []
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        finish: FinishReason = "length"
        detok = _StopAwareDetokenizer(self.tokenizer, params.stop)
        # DRAGIN's passes are unconstrained (the policy asks with plain params); penalties still apply.
        shaper = OutputShaper(params.plain(), self.tokenizer, None, self.eos_ids) if params.penalised else None
        steps = self.iter_tokens(prompt_ids, params, entropies, shaper=shaper)
        text_parts: list[str] = []
        try:
            for token, spent in steps:
                if not ids and stats.completion_tokens == 0:
                    stats.ttft_s = time.perf_counter() - started
                    stats.prefill_s = spent
                else:
                    stats.decode_s += spent
                if token in self.eos_ids:
                    finish = "stop"
                    entropies.pop()
                    break
                ids.append(token)
                stats.completion_tokens += 1
                delta, stopped = detok.push(token)
                text_parts.append(delta)
                if stopped:
                    finish = "stop"
                    break
        finally:
            steps.close()
        if finish == "length" or not detok.stopped:
            text_parts.append(detok.flush())
        attention = None
        if ids:
            # The decode loop runs SDPA, which cannot return attention weights; one eager pass over
            # prompt + completion gives the last layer's weights for the completion rows.
            full = torch.tensor([prompt_ids + ids], device=self.device)
            with self._lock, torch.inference_mode():
                start = time.perf_counter()
                previous = self.model.config._attn_implementation
                self.model.set_attn_implementation("eager")
                try:
                    out = self.model(input_ids=full, output_attentions=True, use_cache=False)
                finally:
                    self.model.set_attn_implementation(previous)
                last = out.attentions[-1][0].mean(dim=0)  # (T, T), heads averaged
                attention = last[len(prompt_ids) :].float().cpu().numpy()
                stats.decode_s += time.perf_counter() - start
        tokens = [str(self.tokenizer.decode([t])) for t in prompt_ids + ids]
        return SignalResult(
            text="".join(text_parts),
            finish_reason=finish,
            token_ids=ids,
            tokens=tokens,
            prompt_len=len(prompt_ids),
            entropies=entropies[: len(ids)],
            attention=attention,
            stats=stats,
        )

    async def generate_with_signals(self, prompt: str, params: SamplingParams) -> SignalResult:
        with self._lock.active(params.priority):
            return await self._in_thread(params.priority, self.generate_with_signals_sync, prompt, params)

    async def _in_thread(self, priority: int, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on one of the engine's step threads, its lock acquisitions at ``priority``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._steps, functools.partial(run_with_priority, priority, fn, *args))

    def close(self) -> None:
        self._steps.shutdown(wait=False, cancel_futures=True)
        if self.chunk_reuse is not None:
            self.chunk_reuse.store.close()
        self.model = None


def _build_chunk_reuse(config: ModelConfig, model: Any, tokenizer: Any) -> ChunkReuse:
    import os

    from cache.backends import open_backend
    from cache.chunk_kv import model_fingerprint
    from cache.chunk_reuse import ChunkReuse
    from cache.kv_blend import UnsupportedModelError
    from services.errors import ConfigError

    cc = config.chunk_cache
    url = cc.backend_url or os.environ.get("REDIS_URL") or None
    backend = open_backend(url) if url and not url.startswith("memory:") else None
    try:
        return ChunkReuse(
            model,
            tokenizer,
            fingerprint=model_fingerprint(config.id, model.config, config.dtype),
            memory_bytes=cc.memory_bytes,
            policy=cc.eviction,
            backend=backend,
            ttl_s=cc.ttl_s,
            recompute_fraction=cc.recompute_fraction,
            min_chunk_tokens=cc.min_chunk_tokens,
        )
    except UnsupportedModelError as exc:
        raise ConfigError(f"models[{config.id}].chunk_cache: {exc}") from exc


class _StopAwareDetokenizer:
    """Turns token ids into text deltas, holding back text that may still become a stop string.

    Decoding the whole completion each step keeps multi-byte characters split across tokens
    intact (a trailing U+FFFD means "wait for the next token").
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0
        self.stopped = False

    def _text(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):
            return "", False
        if self.stop:
            # A stop string may straddle earlier text: search from the oldest place it could begin.
            longest = max(len(s) for s in self.stop)
            window_start = max(0, self.emitted - longest)
            hits = [p for p in (text.find(s, window_start) for s in self.stop) if p != -1]
            if hits:
                cut = min(hits)
                self.stopped = True
                delta = text[self.emitted : cut] if cut > self.emitted else ""
                self.emitted = max(self.emitted, cut)
                return delta, True
            hold = self._held_suffix(text)
            safe_end = len(text) - hold
        else:
            safe_end = len(text)
        delta = text[self.emitted : safe_end] if safe_end > self.emitted else ""
        self.emitted = max(self.emitted, safe_end)
        return delta, False

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that begins some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    best = max(best, n)
                    break
        return best

    def flush(self) -> str:
        text = self._text().rstrip("\ufffd")
        delta = text[self.emitted :]
        self.emitted = len(text)
        return delta
