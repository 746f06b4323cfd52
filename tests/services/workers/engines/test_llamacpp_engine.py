"""The llama.cpp engine on the packaged SmolLM2 GGUF (read as it is): what it shares with the torch engine
(template, tokens, stop strings, sampling, logprobs, penalties), grammar-constrained output, prompt-lookup
speculation, chunk-KV reuse through per-sequence states, and the errors it turns into 4xx or refusals."""

from __future__ import annotations

import asyncio
import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.documents import Chunk, Passage
from retrieval.generation import ChatMessage, SamplingParams
from retrieval.prompts import build_messages, prompt_chunks
from services.errors import ConfigError, InvalidRequestError
from tests.utils.factories import honours_every_schema_form

pytestmark = [pytest.mark.integration, pytest.mark.model]

README = Path(__file__).resolve().parents[4] / "README.md"


@pytest.fixture(scope="module")
def llama() -> Any:
    from services.config import ModelConfig, load_config
    from services.workers.engines.llamacpp_engine import LlamaCppEngine

    config = ModelConfig(
        engine="llamacpp",
        speculative={"method": "ngram", "num_speculative_tokens": 4},
        chunk_cache={"enabled": True, "memory_bytes": 256 << 20},
        llamacpp={"parallel": 2},
    )
    engine = LlamaCppEngine(config, cache_dir=load_config({}).cache_dir)
    yield engine
    engine.close()


def _prompt(engine: Any, text: str) -> str:
    return str(engine.render_chat([ChatMessage(role="user", content=text)]))


def _passages(n: int = 3) -> list[Passage]:
    paragraphs = [p for p in README.read_text(encoding="utf-8").split("\n\n") if 300 < len(p) < 900][:n]
    return [
        Passage(
            chunk=Chunk(chunk_id=i, doc_id=f"readme-{i}", title=f"README part {i}", text=t, chunk_index=0, start=0),
            score=1.0,
        )
        for i, t in enumerate(paragraphs)
    ]


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max()
        return x - math.log(float(np.exp(x).sum()))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum())


def test_template_and_tokens_match_the_hf_tokenizer(llama: Any, engine: Any) -> None:
    # The session's torch engine reads the same model converted to a HF folder: same prompt, same ids.
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="What is the capital of France? Ünïcödé ✓"),
    ]
    prompt = llama.render_chat(messages)
    assert prompt == engine.render_chat(messages)
    assert llama.encode(prompt) == engine.encode(prompt)


def test_greedy_is_deterministic_and_stops(llama: Any) -> None:
    prompt = _prompt(llama, "What is the capital of France? Answer in one word.")
    a = llama.generate_sync(prompt, SamplingParams(max_tokens=12))
    b = llama.generate_sync(prompt, SamplingParams(max_tokens=12))
    assert a.text == b.text and "Paris" in a.text
    assert a.stats.prompt_tokens == llama.count_tokens(prompt)
    assert a.stats.prefill_s > 0 and a.stats.ttft_s >= a.stats.prefill_s
    cut = a.text.index("Paris")
    stopped = llama.generate_sync(prompt, SamplingParams(max_tokens=12, stop=("Paris",)))
    assert stopped.text == a.text[:cut] and stopped.finish_reason == "stop"
    short = llama.generate_sync(_prompt(llama, "Write a long story about a dragon."), SamplingParams(max_tokens=5))
    assert short.finish_reason == "length" and short.stats.completion_tokens == 5


def test_sampling_is_seeded_and_logprobs_are_the_models(llama: Any) -> None:
    prompt = _prompt(llama, "Name an animal.")
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=7, logprobs=3)
    a, b = llama.generate_sync(prompt, params), llama.generate_sync(prompt, params)
    assert a.text == b.text
    greedy = asyncio.run(llama.generate(prompt, SamplingParams(max_tokens=6, logprobs=2)))
    assert greedy.logprobs is not None and len(greedy.logprobs) == greedy.stats.completion_tokens
    for lp in greedy.logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 2
        assert lp.top[0][1] >= lp.top[1][1]
        assert lp.logprob == pytest.approx(lp.top[0][1], abs=1e-4)  # greedy: the chosen token is the top one


def test_penalties_change_a_repetitive_answer(llama: Any) -> None:
    prompt = _prompt(llama, "Repeat the word 'cat' twenty times.")
    plain = llama.generate_sync(prompt, SamplingParams(max_tokens=24))
    penalised = llama.generate_sync(prompt, SamplingParams(max_tokens=24, frequency_penalty=2.0))
    assert plain.text != penalised.text
    assert penalised.text.lower().count("cat") < plain.text.lower().count("cat")


def test_response_format_follows_the_schema(llama: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    prompt = _prompt(llama, "Give the capital of France and its population as JSON.")
    r = llama.generate_sync(
        prompt, SamplingParams(max_tokens=60, response_format={"type": "json_schema", "json_schema": schema})
    )
    value = json.loads(r.text)
    assert set(value) == {"city", "population"} and isinstance(value["population"], int)
    anything = llama.generate_sync(prompt, SamplingParams(max_tokens=60, response_format={"type": "json_object"}))
    assert isinstance(json.loads(anything.text), dict)


def test_every_schema_form_the_edge_accepts_is_honoured(llama: Any) -> None:
    finishes = honours_every_schema_form(llama)
    assert sum(f == "stop" for f in finishes.values()) >= len(finishes) - 1, finishes  # the answers end


def test_a_schema_llama_cpp_cannot_follow_is_a_400(llama: Any) -> None:
    prompt = _prompt(llama, "Hi")
    bad = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(InvalidRequestError) as err:
        llama.generate_sync(
            prompt, SamplingParams(max_tokens=8, response_format={"type": "json_schema", "json_schema": bad})
        )
    assert err.value.param == "response_format"


def test_prompt_lookup_keeps_greedy_output(llama: Any) -> None:
    passages = _passages(2)
    prompt = llama.render_chat(build_messages("Quote the first sentence of passage 1 exactly.", passages))
    params = SamplingParams(max_tokens=48)
    plain = llama.generate_sync(prompt, params, spec=False)
    spec = llama.generate_sync(prompt, params, spec=True)
    assert spec.text == plain.text
    assert spec.stats.speculative is not None and spec.stats.speculative["drafted"] > 0
    assert spec.stats.speculative["accepted"] > 0


def test_concurrent_streams_interleave_and_finish(llama: Any) -> None:
    prompts = [_prompt(llama, q) for q in ("Name three colours.", "Count from one to five.", "Say hello.")]
    params = SamplingParams(max_tokens=16)
    alone = [llama.generate_sync(p, params) for p in prompts]

    async def together() -> list[Any]:
        return list(await asyncio.gather(*(llama.generate(p, params) for p in prompts)))

    # Three requests on two sequences: the third waits for a free one. Other sequences' cells in the shared
    # KV buffer change llama.cpp's attention kernels' rounding, so a near-tie may later go another way: each
    # answer starts as when alone and ends properly.
    for res, solo in zip(asyncio.run(together()), alone, strict=True):
        assert res.finish_reason in ("stop", "length") and res.stats.completion_tokens > 0
        assert res.stats.first_token == solo.stats.first_token
        assert res.text[:6] == solo.text[:6]
    assert llama.runtime.pos_range(0) == (-1, -1) and llama.runtime.pos_range(1) == (-1, -1)  # sequences freed


def test_signals_have_entropies_and_no_attention(llama: Any) -> None:
    res = llama.generate_with_signals_sync(_prompt(llama, "Who wrote Hamlet?"), SamplingParams(max_tokens=8))
    assert res.attention is None
    assert len(res.entropies) == len(res.token_ids) > 0 and all(e >= 0 for e in res.entropies)
    assert len(res.tokens) == res.prompt_len + len(res.token_ids)


def test_chunk_reuse_diverges_less_as_more_is_recomputed(llama: Any) -> None:
    reuse = llama.chunk_reuse
    passages = _passages(3)
    prompt = llama.render_chat(build_messages("What does make test install?", passages))
    chunks = prompt_chunks(passages)
    counts = reuse.warm(prompt, chunks)
    assert counts["chunks"] == 3
    ids = llama.encode(prompt)
    with llama._lock:
        full = llama.runtime.decode(0, ids, 0)
        llama.runtime.seq_rm(0)
    divergence = {}
    for fraction in (0.0, 0.15, 1.0):
        ids2, spans, fetched = reuse.prefetch(prompt, chunks)
        assert ids2 == ids and len(spans) == 3
        with llama._lock:
            pre = reuse.prefill(0, ids2, spans, fetched, fraction=fraction)
            assert llama.runtime.pos_range(0) == (0, len(ids) - 1)
            llama.runtime.seq_rm(0)
        assert pre is not None and pre.report["chunk_hits"]["memory"] == 3 and pre.report["chunk_misses"] == 0
        assert pre.report["recomputed_share"] == pytest.approx(fraction, abs=0.02)
        divergence[fraction] = _kl(full, pre.logits)
    # The blend path at fraction 1 recomputes every chunk token: the full prefill's distribution.
    assert divergence[1.0] < 0.01
    assert divergence[1.0] <= divergence[0.15] <= divergence[0.0]
    assert divergence[0.15] < 0.5


def test_the_fresh_tokens_of_every_reused_chunk_go_through_the_model_in_one_batch(llama: Any) -> None:
    """Separators and first tokens of all reused chunks are one forward (more chunks than blend sequences: one
    per group), then the question: the prompt is assembled at its positions and reads like the full prefill."""
    from services.workers.engines.llamacpp_engine import BLEND_SEQS

    reuse, rt = llama.chunk_reuse, llama.runtime
    notes = [
        f"Note {n}: the {word} ferry leaves pier {n} at {n % 12 + 1} o'clock and carries {n * 7} bicycles."
        for n, word in enumerate(["red", "blue", "green", "amber", "violet", "grey", "white", "black", "pink"] * 2)
    ]
    passages = [
        Passage(chunk=Chunk(chunk_id=200 + i, doc_id=f"f{i}", title="", text=t, chunk_index=0, start=0), score=1.0)
        for i, t in enumerate(notes)
    ]
    assert len(passages) > BLEND_SEQS
    calls = {"runs": 0, "decode": 0}
    plain_runs, plain_decode = rt.decode_runs, rt.decode

    def runs(*a: Any, **kw: Any) -> Any:
        calls["runs"] += 1
        return plain_runs(*a, **kw)

    def decode(*a: Any, **kw: Any) -> Any:
        calls["decode"] += 1
        return plain_decode(*a, **kw)

    for n_passages, batches in ((3, 1), (len(passages), 2)):
        prompt = llama.render_chat(build_messages("When does the amber ferry leave?", passages[:n_passages]))
        chunks = prompt_chunks(passages[:n_passages])
        reuse.warm(prompt, chunks)
        ids, spans, fetched = reuse.prefetch(prompt, chunks)
        assert len(spans) == n_passages
        with llama._lock:
            full = rt.decode(0, ids, 0)
            rt.seq_rm(0)
            calls.update(runs=0, decode=0)
            rt.decode_runs, rt.decode = runs, decode
            try:
                pre = reuse.prefill(0, ids, spans, fetched, fraction=0.3)
            finally:
                del rt.decode_runs, rt.decode
            assert rt.pos_range(0) == (0, len(ids) - 1)
            assert all(rt.pos_range(f) == (-1, -1) for f in llama.blend_seqs)  # the blend sequences are left empty
            rt.seq_rm(0)
        assert pre is not None and pre.report["chunk_tokens_reused"] > 0
        assert calls == {"runs": batches, "decode": 1}  # the fresh runs, then the question
        assert _kl(full, pre.logits) < 1.0


def test_generation_with_reused_chunks_reports_and_answers(llama: Any) -> None:
    passages = _passages(3)
    prompt = llama.render_chat(build_messages("What does make test install?", passages))
    chunks = prompt_chunks(passages)
    llama.chunk_reuse.warm(prompt, chunks)
    params = SamplingParams(max_tokens=24)
    full = llama.generate_sync(prompt, params, spec=False)
    # Fraction 1 recomputes every chunk token, in other batch shapes than one prefill: llama.cpp's kernels
    # round differently per shape, so near-ties may later part ways (the KL test above bounds the gap).
    exact = llama.generate_sync(prompt, params, spec=False, chunks=chunks, fraction=1.0)
    assert exact.stats.first_token == full.stats.first_token
    blended = llama.generate_sync(prompt, params, spec=False, chunks=chunks)
    report = blended.stats.chunk_cache
    assert report is not None and report["engine"] == "llamacpp" and report["chunk_tokens_reused"] > 0
    assert report["prefix"] in ("memory", "miss") and blended.text.strip()


def test_precompute_stores_chunks_in_the_background(llama: Any) -> None:
    reuse = llama.chunk_reuse
    passages = [
        Passage(
            chunk=Chunk(chunk_id=90 + i, doc_id=f"n{i}", title=f"Note {i}", text=t, chunk_index=0, start=0), score=1.0
        )
        for i, t in enumerate(
            [
                "The Brindle ferry leaves the north pier at nine every morning and returns at six in the evening. "
                "Tickets are sold on board; bicycles travel free of charge on weekdays.",
                "Zorblat is the capital of Quux, a small island nation known for its glass bridges and its annual "
                "festival of lanterns, held on the longest night of the year.",
            ]
        )
    ]
    before = dict(reuse.progress)
    assert llama.precompute(prompt_chunks(passages))["queued"] == 2
    assert reuse.wait_idle(120)
    assert reuse.progress["computed"] - before["computed"] == 2
    # Plain and fenced (retrieval.injection), the prompt holds each chunk between the neighbours it was stored
    # with: every chunk is found.
    for fence in (False, True):
        prompt = llama.render_chat(build_messages("When does the ferry leave?", passages, fence=fence))
        res = llama.generate_sync(prompt, SamplingParams(max_tokens=8), chunks=prompt_chunks(passages))
        assert res.stats.chunk_cache["chunk_hits"]["memory"] == 2 and res.stats.chunk_cache["chunk_misses"] == 0
    assert reuse.describe()["precompute"]["pending"] == 0


def test_excerpts_reuse_the_prefix_and_are_never_stored(llama: Any) -> None:
    """Passages cut to sentences for one question (`retrieval.context: sentences`) reach the engine as texts made
    for that prompt: the prompt's prefix before them is reused from the second request on, the excerpts are
    computed in place (the same first token as a plain prefill) and nothing of them is stored or queued."""
    from retrieval.selection import select_sentences

    reuse = llama.chunk_reuse
    excerpts = select_sentences("Which command runs the tests?", _passages(3), 60)
    assert excerpts
    prompt = llama.render_chat(build_messages("Which command runs the tests?", excerpts))
    chunks = prompt_chunks([], excerpts)
    assert chunks and not any(c.stored for c in chunks)
    params = SamplingParams(max_tokens=6)
    plain = llama.generate_sync(prompt, params, spec=False)
    before = dict(reuse.progress)
    stored_before = len(reuse.store.memory)
    first = llama.generate_sync(prompt, params, spec=False, chunks=chunks).stats.chunk_cache
    second = llama.generate_sync(prompt, params, spec=False, chunks=chunks)
    report = second.stats.chunk_cache
    assert first is not None and report is not None
    assert report["prefix"] == "memory" and report["prompt_texts"] == len(excerpts) and report["chunks"] == 0
    assert report["chunk_misses"] == 0 and report["chunk_tokens_reused"] == 0
    assert report["tokens_computed"] < report["prompt_tokens"]  # the system prompt's prefix was restored
    assert second.stats.first_token == plain.stats.first_token
    assert reuse.progress == before and reuse.describe()["precompute"]["pending"] == 0  # nothing queued
    stored_after = len(reuse.store.memory)
    assert stored_after - stored_before <= 1  # at most the prefix's own entry


def test_a_chunk_stored_for_one_tenant_is_never_reused_for_another(llama: Any) -> None:
    """The same text in two tenants' namespaces is two entries: a request whose passage came from globex's
    document neither hits nor times acme's entry (a membership oracle), while acme's next request hits."""
    reuse = llama.chunk_reuse
    passages = [
        Passage(chunk=Chunk(90 + i, f"t{i}", "Ledger", text, 0, 0, "", "acme"), score=1.0)
        for i, text in enumerate(
            [
                "The Vantor account was closed on the third of May after the audit found two unpaid invoices "
                "and a missing signature on the renewal form.",
            ]
        )
    ]
    theirs = [Passage(chunk=replace(p.chunk, namespace="globex"), score=1.0) for p in passages]
    prompt = llama.render_chat(build_messages("When was the Vantor account closed?", passages))
    assert llama.render_chat(build_messages("When was the Vantor account closed?", theirs)) == prompt
    reuse.warm(prompt, prompt_chunks(passages))
    params = SamplingParams(max_tokens=4)
    other = llama.generate_sync(prompt, params, spec=False, chunks=prompt_chunks(theirs)).stats.chunk_cache
    assert other["chunk_misses"] == 1 and other["chunk_tokens_reused"] == 0
    same = llama.generate_sync(prompt, params, spec=False, chunks=prompt_chunks(passages)).stats.chunk_cache
    assert same["chunk_misses"] == 0 and same["chunk_tokens_reused"] > 0


def test_a_state_llama_cpp_refuses_is_recomputed_not_used(llama: Any) -> None:
    from cache.chunk_state import ChunkState

    reuse = llama.chunk_reuse
    passages = _passages(2)
    prompt = llama.render_chat(build_messages("What is Ragyard?", passages))
    chunks = prompt_chunks(passages)
    reuse.warm(prompt, chunks)
    ids, spans, _ = reuse.prefetch(prompt, chunks)
    cid = ids[spans[0].start : spans[0].end]
    key = reuse._chunk_key(cid, spans[0].namespace)
    good = reuse.store.memory.get(key)
    # Same key, model and token ids, but a blob cut short: what another llama.cpp build's layout looks like.
    reuse.store.memory.remove(key)
    broken = ChunkState(key, good.model, good.token_ids, good.base, good.blob[: len(good.blob) // 2])
    reuse.store.put(broken)
    params = SamplingParams(max_tokens=16)
    exact = llama.generate_sync(prompt, params, spec=False)
    res = llama.generate_sync(prompt, params, spec=False, chunks=chunks, fraction=1.0)
    assert res.stats.first_token == exact.stats.first_token
    res = llama.generate_sync(prompt, params, spec=False, chunks=chunks)
    assert res.stats.chunk_cache["chunk_misses"] >= 1
    assert reuse.store.memory.get(key) is None or reuse.store.memory.get(key).blob != broken.blob


def test_worker_tokenize_and_detokenize(llama: Any) -> None:
    from services.deployments.worker import Worker

    worker = Worker({"models": [{"id": "smollm2-135m-instruct", "engine": "llamacpp"}]}, engine=llama)
    out = worker.tokenize("Hello world")
    assert out["count"] == len(out["tokens"]) > 0 and "".join(out["token_strs"]).replace("Ġ", " ")
    assert worker.detokenize(out["tokens"])["prompt"] == "Hello world"


@pytest.mark.unit
def test_a_gguf_llama_cpp_cannot_load_is_a_config_error(tmp_path: Path) -> None:
    import gguf

    from services.workers.engines.llamacpp_runtime import LlamaRuntime
    from services.workers.model_store import resolve_gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "nosucharch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match="nosucharch"):
        LlamaRuntime(resolve_gguf(str(path), str(tmp_path)), n_ctx=256, n_seq=1, threads=1)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model", encoding="utf-8")
    with pytest.raises(ConfigError, match="GGUF magic"):
        resolve_gguf(str(text), str(tmp_path))


@pytest.mark.unit
def test_llamacpp_config_refuses_what_it_cannot_run() -> None:
    from pydantic import ValidationError

    from services.config import ModelConfig

    for spec in ({"method": "draft_model"}, {"method": "self_draft"}, {"method": "ngram", "adaptive": True}):
        with pytest.raises(ValidationError):
            ModelConfig(engine="llamacpp", speculative=spec)
    assert ModelConfig(engine="llamacpp", speculative={"method": "ngram"}, chunk_cache={"enabled": True})


EXIT_SCRIPT = """
import atexit
seen = []
# Registered before the engine's module is imported, so it runs after the engine's own exit hooks.
atexit.register(lambda: print("at exit:", seen[0].closed, seen[0].runtime.closed, flush=True))
from core.chunks import PromptChunk
from services.config import ModelConfig, load_config
from services.workers.engines.llamacpp_engine import LlamaCppEngine
engine = LlamaCppEngine(
    ModelConfig(engine="llamacpp", chunk_cache={"enabled": True, "memory_bytes": 64 << 20}),
    cache_dir=load_config({}).cache_dir,
)
seen.append(engine)
text = open("README.md", encoding="utf-8").read()
engine.precompute([PromptChunk(text[i : i + 1500], "shared") for i in range(0, 30000, 1500)])
print("left open", flush=True)
"""


def test_an_engine_left_open_is_closed_before_the_interpreter_exits(tmp_path: Path) -> None:
    """An engine nobody closed (its background chunk queue busy) is closed by its exit hook, context before
    model, while the interpreter is whole: left to the garbage collector at exit, a model freed before its
    context crashed a CI run after every test had passed."""
    import subprocess
    import sys

    root = README.parent
    script = tmp_path / "left_open.py"
    script.write_text(EXIT_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONFAULTHANDLER": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["left open", "at exit: True True"]
