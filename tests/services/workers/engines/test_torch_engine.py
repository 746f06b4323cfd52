from __future__ import annotations

import asyncio
from typing import Any

import pytest

from retrieval.generation import ChatMessage, SamplingParams
from services.errors import InvalidRequestError
from services.workers.engines.stepping import StopAwareDetokenizer

pytestmark = [pytest.mark.integration, pytest.mark.model]


def _prompt(engine: Any, text: str) -> str:
    return str(engine.render_chat([ChatMessage(role="user", content=text)]))


def test_chat_template_and_greedy_is_deterministic(engine: Any) -> None:
    prompt = _prompt(engine, "What is the capital of France? Answer in one word.")
    assert prompt.endswith("<|im_start|>assistant\n")
    a = engine.generate_sync(prompt, SamplingParams(max_tokens=12))
    b = engine.generate_sync(prompt, SamplingParams(max_tokens=12))
    assert a.text == b.text and "Paris" in a.text
    assert a.stats.prompt_tokens == engine.count_tokens(prompt)
    assert a.stats.prefill_s > 0 and a.stats.ttft_s >= a.stats.prefill_s


def test_max_tokens_gives_length(engine: Any) -> None:
    r = engine.generate_sync(_prompt(engine, "Write a long story about a dragon."), SamplingParams(max_tokens=5))
    assert r.finish_reason == "length" and r.stats.completion_tokens == 5


def test_stop_string_truncates_and_finishes(engine: Any) -> None:
    prompt = _prompt(engine, "What is the capital of France? Answer in one word.")
    full = engine.generate_sync(prompt, SamplingParams(max_tokens=12)).text
    cut = full.index("Paris")
    r = engine.generate_sync(prompt, SamplingParams(max_tokens=12, stop=("Paris",)))
    assert r.text == full[:cut] and r.finish_reason == "stop"


def test_stream_equals_generate(engine: Any) -> None:
    prompt = _prompt(engine, "Name three colours.")
    params = SamplingParams(max_tokens=16, stop=("\n\n",))

    async def collect() -> tuple[list[str], Any]:
        parts, last = [], None
        async for chunk in engine.stream(prompt, params):
            parts.append(chunk.text)
            last = chunk
        return parts, last

    parts, last = asyncio.run(collect())
    whole = engine.generate_sync(prompt, params)
    assert "".join(parts) == whole.text
    assert len([p for p in parts if p]) > 1
    assert last.finish_reason == whole.finish_reason and last.stats.completion_tokens == whole.stats.completion_tokens


def test_sampling_is_seeded(engine: Any) -> None:
    prompt = _prompt(engine, "Tell me a fun fact.")
    p = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    assert engine.generate_sync(prompt, p).text == engine.generate_sync(prompt, p).text
    texts = {
        engine.generate_sync(prompt, SamplingParams(max_tokens=10, temperature=1.0, seed=s)).text for s in range(4)
    }
    assert len(texts) > 1


def test_prompt_over_context_is_refused(engine: Any) -> None:
    with pytest.raises(InvalidRequestError, match="prompt tokens"):
        engine.generate_sync("word " * 3000, SamplingParams(max_tokens=4))


class _CharTokenizer:
    """One character per token id, so stop handling can be checked by hand."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


@pytest.mark.unit
def test_detokenizer_holds_back_partial_stop_strings() -> None:
    d = StopAwareDetokenizer(_CharTokenizer(), ("END",))
    out = [d.push(ord(c)) for c in "abEN"]
    assert "".join(t for t, _ in out) == "ab"  # "EN" could begin "END"
    assert d.push(ord("x")) == ("ENx", False)
    delta, stopped = d.push(ord("E"))
    assert (delta, stopped) == ("", False)
    for c in "ND":
        delta, stopped = d.push(ord(c))
    assert stopped and delta == "" and d.emitted == len("abENx")


@pytest.mark.unit
def test_detokenizer_flush_releases_held_text() -> None:
    d = StopAwareDetokenizer(_CharTokenizer(), ("END",))
    for c in "hiE":
        d.push(ord(c))
    assert d.flush() == "E"


def test_abandoned_stream_closes_after_its_step(engine: Any) -> None:
    """A consumer cancelled while a decode step runs in its thread: no error, and the generator is
    closed once that step returns (the engine's lock is free for the next request)."""
    prompt = _prompt(engine, "Write a long story about a dragon.")

    async def main() -> str:
        got: list[str] = []

        async def consume() -> None:
            async for chunk in engine.stream(prompt, SamplingParams(max_tokens=200)):
                got.append(chunk.text)

        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.005)
        task.cancel()  # almost surely mid-step: the next step is already in its thread
        with pytest.raises(asyncio.CancelledError):
            await task
        return (await engine.generate(prompt, SamplingParams(max_tokens=4))).text

    assert asyncio.run(main())
    assert engine._lock.acquire(timeout=5)
    engine._lock.release()


def test_higher_priority_streams_take_the_steps(engine: Any) -> None:
    """A request of a higher SLA priority arriving mid-way gets the decode steps until it is done: the lower
    one advances by the step in progress and, on a loaded machine, a step or two when the higher one's gap
    between steps passes the lock's grace (plain interleaving would alternate them, ~24 low steps here)."""
    prompt = _prompt(engine, "Write a long story about a dragon who learns to sing.")

    async def main() -> list[str]:
        events: list[str] = []

        async def run(tag: str, priority: int, max_tokens: int) -> None:
            params = SamplingParams(max_tokens=max_tokens, priority=priority)
            async for chunk in engine.stream(prompt, params):
                if chunk.text:
                    events.append(tag)
            events.append(tag + "-done")

        low = asyncio.create_task(run("low", 0, 80))
        while events.count("low") < 3:
            await asyncio.sleep(0.005)
        await run("high", 3, 24)
        await low
        return events

    events = asyncio.run(main())
    first, last = events.index("high"), events.index("high-done")
    assert last - first >= 10  # the high stream really streamed
    assert events[first:last].count("low") <= 5, events
