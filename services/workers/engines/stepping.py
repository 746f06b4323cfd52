"""What the CPU engines (torch, llama.cpp) share around their decode loops: one model step at a time on a
pool of step threads under a priority lock, the async stream over the synchronous one, and stop strings
applied to streamed text."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

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
from services.workers.engines.priority_lock import PriorityLock, run_with_priority

T = TypeVar("T")
# Threads for the decode steps of one engine: more than the requests a worker replica takes at once.
STEP_THREADS = 64


class _Taker(Protocol):
    def take(self) -> list[TokenLogprob] | None: ...


class SteppedEngine:
    """The async face of an engine whose synchronous ``stream_sync`` / ``generate_with_signals_sync`` take
    the engine's ``PriorityLock`` around each model step."""

    _lock: PriorityLock
    _steps: ThreadPoolExecutor

    def _start_steps(self, name: str) -> None:
        # One forward pass at a time: concurrent requests interleave step by step instead of
        # fighting over the same cores, the highest priority (SLA tier) first.
        self._lock = PriorityLock()
        # The steps' threads. Each in-flight request's next step waits on the lock in a thread of its own:
        # with asyncio's default pool (min(32, CPUs + 4) threads) the steps queued first-come first-served
        # in the pool before they ever reached the lock, so priority could not act, and a higher request's
        # next step could be stuck behind lower ones holding every thread. Blocked threads cost nothing;
        # the worker accepts 32 requests at a time (services/serve/app.py).
        self._steps = ThreadPoolExecutor(max_workers=STEP_THREADS, thread_name_prefix=name)

    # What each engine provides: its synchronous stream (keywords of its own: chunks, spec, reuse, ...) and
    # its decode with per-token signals, each taking the lock around every model step.
    stream_sync: Callable[..., Iterator[GenerationChunk]]
    generate_with_signals_sync: Callable[[str, SamplingParams], SignalResult]

    async def stream(
        self, prompt: str, params: SamplingParams, chunks: list[PromptChunk] | None = None
    ) -> AsyncIterator[GenerationChunk]:
        it = self.stream_sync(prompt, params, chunks=chunks)
        done = object()
        step: asyncio.Future[Any] | None = None
        try:
            with self._lock.active(params.priority):
                while True:
                    # Each step runs in a thread (the model releases the GIL), the event loop keeps serving.
                    step = asyncio.ensure_future(self._in_thread(params.priority, next, it, done))
                    # Shielded: if the caller goes away mid-step, the step still ends before the generator
                    # closes.
                    chunk: Any = await asyncio.shield(step)
                    step = None
                    if chunk is done:
                        return
                    yield chunk
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                if step is not None and not step.done():
                    # A thread is inside the generator: close it once that step returns (closing it now
                    # raises "generator already executing" and leaves it open).
                    step.add_done_callback(lambda _f: asyncio.ensure_future(self._in_thread(0, close)))
                else:
                    close()

    async def generate(
        self, prompt: str, params: SamplingParams, chunks: list[PromptChunk] | None = None
    ) -> GenerationResult:
        return await collect(self.stream(prompt, params, chunks))

    def generate_sync(self, prompt: str, params: SamplingParams, **options: Any) -> GenerationResult:
        """The whole completion in the calling thread (the library path, benchmarks); ``options`` are the
        engine's ``stream_sync`` keywords (chunks, spec, reuse, fraction)."""
        parts, last = [], None
        for chunk in self.stream_sync(prompt, params, **options):
            parts.append(chunk.text)
            last = chunk
        assert last is not None and last.finish_reason is not None
        return GenerationResult("".join(parts), last.finish_reason, last.stats or GenerationStats())

    async def generate_with_signals(self, prompt: str, params: SamplingParams) -> SignalResult:
        with self._lock.active(params.priority):
            return await self._in_thread(params.priority, self.generate_with_signals_sync, prompt, params)

    async def _in_thread(self, priority: int, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on one of the engine's step threads, its lock acquisitions at ``priority``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._steps, functools.partial(run_with_priority, priority, fn, *args))


def emit_tokens(
    steps: Iterator[tuple[int, float]],
    detok: StopAwareDetokenizer,
    stats: GenerationStats,
    eos_ids: set[int],
    started: float,
    shaper: _Taker | None = None,
) -> Generator[GenerationChunk, None, FinishReason]:
    """Turn (token, seconds its step took) into streamed chunks: timings, stop strings, the EOS; returns the
    finish reason. The caller yields the last chunk (with the stats) and closes ``steps``."""
    finish: FinishReason = "length"

    def piece(text: str) -> GenerationChunk:
        logprobs = shaper.take() if shaper is not None else None
        return GenerationChunk(text, None, None, stats.prompt_tokens, stats.completion_tokens, logprobs)

    for token, spent in steps:
        if stats.completion_tokens == 0 and stats.first_token is None:
            stats.ttft_s = time.perf_counter() - started
            stats.first_token = token
            stats.prefill_s = spent
            stats.queue_s = max(0.0, stats.ttft_s - spent)
        else:
            stats.decode_s += spent
        if token in eos_ids:
            return "stop"
        stats.completion_tokens += 1
        delta, stopped = detok.push(token)
        if stopped:
            if delta:
                yield piece(delta)
            return "stop"
        if delta:
            yield piece(delta)
    return finish


def signal_tokens(
    steps: Iterator[tuple[int, float]],
    detok: StopAwareDetokenizer,
    stats: GenerationStats,
    eos_ids: set[int],
    entropies: list[float],
    started: float,
) -> tuple[list[int], str, FinishReason]:
    """Drain a decode with per-token entropies (DRAGIN's pass): the completion's ids (the end of turn and its
    entropy left out), its text up to a stop string, and the finish reason. The caller closes ``steps``."""
    ids: list[int] = []
    parts: list[str] = []
    finish: FinishReason = "length"
    for token, spent in steps:
        if not ids and stats.completion_tokens == 0:
            stats.ttft_s = time.perf_counter() - started
            stats.prefill_s = spent
        else:
            stats.decode_s += spent
        if token in eos_ids:
            finish = "stop"
            entropies.pop()
            break
        ids.append(token)
        stats.completion_tokens += 1
        delta, stopped = detok.push(token)
        parts.append(delta)
        if stopped:
            finish = "stop"
            break
    if finish == "length" or not detok.stopped:
        parts.append(detok.flush())
    return ids, "".join(parts), finish


def last_chunk(
    detok: StopAwareDetokenizer, finish: FinishReason, stats: GenerationStats, shaper: _Taker | None = None
) -> GenerationChunk:
    """The stream's closing chunk: held-back text (unless a stop string cut it), the finish reason, stats."""
    text = detok.flush() if finish == "length" or not detok.stopped else ""
    logprobs = shaper.take() if shaper is not None else None
    return GenerationChunk(text, finish, stats, 0, 0, logprobs)


class StopAwareDetokenizer:
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
