"""Chunk-KV reuse with the real model: RoPE re-alignment, recompute fractions, tiers over a real
redis-server, corrupt entries, concurrent readers and writers of one chunk."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from cache.chunk_kv import ChunkKV, ChunkKVStore, chunk_key, deserialize, metrics_text, serialize
from cache.chunk_reuse import ChunkReuse
from cache.redis_backend import RedisBackend
from retrieval.documents import Chunk, Passage
from retrieval.generation import SamplingParams
from retrieval.prompts import build_messages, prompt_chunks
from services.config import ModelConfig, load_config
from tests.metrics_text import sample_sum

MODEL = ModelConfig().id  # the chunk engine's model: its metrics carry this id


def rag_prompts(engine: Any, data: Path, n: int, file: str = "dev_hotpotqa.jsonl") -> list[tuple[str, list[str]]]:
    """(prompt, chunk texts): a question and five of its contexts, as the `single` policy builds them."""
    out = []
    rows = [json.loads(line) for line in (data / file).read_text(encoding="utf-8").splitlines()[:n]]
    for r, row in enumerate(rows):
        passages = [
            Passage(Chunk(i, f"d{r}-{i}", c["title"], c["text"], 0, 0), 1.0 - i / 10)
            for i, c in enumerate(row["contexts"][:5])
        ]
        prompt = engine.render_chat(build_messages(row["question"], passages, style="short"))
        out.append((prompt, prompt_chunks(passages)))
    return out


@pytest.fixture(scope="module")
def chunk_engine() -> Any:
    from services.workers.engines.torch_engine import TorchEngine

    cfg = ModelConfig(chunk_cache={"enabled": True, "recompute_fraction": 0.15, "backend_url": "memory://"})
    engine = TorchEngine(cfg, cache_dir=load_config({}).cache_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(chunk_engine: Any, shared_data: Path) -> list[tuple[str, list[str]]]:
    return rag_prompts(chunk_engine, shared_data, 4)


def test_rope_realignment_matches_direct_computation(chunk_engine: Any) -> None:
    reuse: ChunkReuse = chunk_engine.chunk_reuse
    b = reuse.blender
    ids = chunk_engine.encode("Kiss and Tell is a 1945 American comedy film starring Shirley Temple.")
    pad = chunk_engine.encode("Passages:\n[1] Some earlier text that shifts every position.\n\n[2] ")
    alone_k, _ = b.compute_span(ids, *b.empty_kv(len(ids)), 0)
    shifted_k, _ = b.compute_span(pad + ids, *b.empty_kv(len(pad) + len(ids)), 0)
    # Layer 0's keys depend on the token and its position only: re-rotating the keys computed at
    # positions 0.. must give the keys computed directly at len(pad)..
    direct = shifted_k[0, :, len(pad) :]
    moved = b.realign(alone_k[0], len(pad))
    assert torch.allclose(moved, direct, atol=1e-4), (moved - direct).abs().max()
    assert not torch.allclose(alone_k[0], direct, atol=1e-2)  # the shift is not a no-op
    back = b.realign(moved, -len(pad))
    assert torch.allclose(back, alone_k[0], atol=1e-4)


def test_recompute_fraction_one_is_identical_to_full_prefill(chunk_engine: Any, prompts: Any) -> None:
    params = SamplingParams(max_tokens=24)
    for prompt, chunks in prompts[:1]:  # greedy and exact: one prompt shows it (the blend test below takes two)
        chunk_engine.chunk_reuse.warm(prompt, chunks)
        plain = chunk_engine.generate_sync(prompt, params, spec=False)
        reused = chunk_engine.generate_sync(prompt, params, spec=False, chunks=chunks, fraction=1.0)
        assert reused.text == plain.text
        assert reused.stats.completion_tokens == plain.stats.completion_tokens
        report = reused.stats.chunk_cache
        assert report["chunk_hits"]["memory"] == 5 and report["chunk_misses"] == 0
        assert report["chunk_tokens_recomputed"] == report["chunk_tokens"]
    # Token for token, including the first logits.
    prompt, chunks = prompts[0]
    full = chunk_engine.chunk_reuse.prefill(prompt, chunks, mode="full")
    blend1 = chunk_engine.chunk_reuse.prefill(prompt, chunks, mode="blend", fraction=1.0)
    ids = chunk_engine.encode(prompt)
    with torch.inference_mode():  # the model's own forward over the whole prompt, outside the chunk cache
        hf = chunk_engine.model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.equal(hf, full.logits) and torch.equal(hf, blend1.logits)


def test_the_blend_path_itself_converges_to_full_prefill(chunk_engine: Any, prompts: Any) -> None:
    """The blend machinery (re-rotated stored KV, layer 0 over every token, layer-1 deviation, selective
    recompute over the rest of the layers), not its fraction-1 shortcut: with every chunk token
    recomputed it must give full prefill's logits up to float error, and with a part recomputed its
    next-token distribution must stay close, closer the more is recomputed."""
    reuse: ChunkReuse = chunk_engine.chunk_reuse
    kls = []
    for prompt, chunks in prompts[:2]:
        reuse.warm(prompt, chunks)
        full = reuse.prefill(prompt, chunks, mode="full").logits.float()
        every = reuse.prefill(prompt, chunks, mode="blend", fraction=1.0, exact_at_full=False)
        assert every.report["chunk_tokens_recomputed"] == every.report["chunk_tokens"]
        assert (every.logits.float() - full).abs().max() < 1e-3  # logits of size ~30; measured 5e-5
        assert int(every.logits.argmax()) == int(full.argmax())
        p_full = torch.log_softmax(full, -1)

        def kl(
            fraction: float, p_full: torch.Tensor = p_full, prompt: str = prompt, chunks: list[str] = chunks
        ) -> float:
            q = torch.log_softmax(reuse.prefill(prompt, chunks, mode="blend", fraction=fraction).logits.float(), -1)
            return float((p_full.exp() * (p_full - q)).sum())

        kls.append((kl(0.0), kl(0.5), kl(0.9)))
    # Measured on these prompts: KL 0.48 / 0.057 with nothing recomputed, 0.005 with half, ~0 with 0.9.
    for plain, half, most in kls:
        assert most <= half <= plain + 1e-6, kls
        assert half < 0.02 and most < 1e-3, kls


def test_blend_recomputes_its_fraction_and_leaves_the_exact_chunk_alone(chunk_engine: Any, prompts: Any) -> None:
    prompt, chunks = prompts[1]
    reuse: ChunkReuse = chunk_engine.chunk_reuse
    reuse.warm(prompt, chunks)
    out = reuse.prefill(prompt, chunks, mode="blend", fraction=0.2)
    r = out.report
    assert r["chunks"] == 5 and r["chunk_hits"]["memory"] == 5
    assert r["chunk_tokens_recomputed"] == -(-r["chunk_tokens"] * 2 // 10)  # ceil(0.2 * chunk tokens)
    assert r["chunk_tokens_reused"] == r["chunk_tokens"] - r["chunk_tokens_recomputed"]
    assert r["tokens_computed"] < r["prompt_tokens"] / 2
    # The first chunk was stored after the same prefix at the same place: its KV is exact, so the
    # deviation that picks tokens to recompute is near zero there and large in later chunks.
    _, spans = reuse.tokenize(prompt, chunks)
    first = spans[0].end - spans[0].start
    dev = _deviation(reuse, prompt, chunks)
    assert float(dev[:first].max()) < 1e-3 * float(dev[first:].max())


def _deviation(reuse: ChunkReuse, prompt: str, chunks: list[str]) -> torch.Tensor:
    """Layer-1 deviation per chunk token, in prompt order (what blend selection ranks)."""
    captured: dict[str, Any] = {}
    original = reuse.blender.prefill

    def spy(*args: Any, **kwargs: Any) -> Any:
        res = original(*args, **kwargs)
        captured["dev"] = res.deviation
        return res

    reuse.blender.prefill = spy  # type: ignore[method-assign]
    try:
        reuse.prefill(prompt, chunks, mode="blend", fraction=0.1)
    finally:
        del reuse.blender.prefill
    return captured["dev"]


def test_prefix_mode_is_exact_and_misses_are_stored_for_next_time(chunk_engine: Any, prompts: Any) -> None:
    prompt, chunks = prompts[2]
    reuse: ChunkReuse = chunk_engine.chunk_reuse
    reuse.store.clear_memory()
    params = SamplingParams(max_tokens=16)
    plain = chunk_engine.generate_sync(prompt, params, spec=False)
    prefix = chunk_engine.generate_sync(prompt, params, spec=False, chunks=chunks, reuse="prefix")
    assert prefix.text == plain.text
    assert prefix.stats.chunk_cache["prefix"] == "miss"
    cold = chunk_engine.generate_sync(prompt, params, spec=False, chunks=chunks)
    assert cold.stats.chunk_cache["chunk_misses"] == 5 and cold.stats.chunk_cache["prefix"] == "memory"
    # Missed chunks were computed in place (exact), then stored alone once the answer was out.
    assert cold.text == plain.text
    hits = sample_sum(metrics_text(), "ragyard_chunk_kv_lookups_total", model=MODEL, tier="memory", result="hit")
    warm = chunk_engine.generate_sync(prompt, params, spec=False, chunks=chunks)
    assert warm.stats.chunk_cache["chunk_hits"]["memory"] == 5
    after = sample_sum(metrics_text(), "ragyard_chunk_kv_lookups_total", model=MODEL, tier="memory", result="hit")
    assert after >= hits + 5  # the model's own series (the prefix's lookup may count too)


def test_speculative_decoding_continues_from_a_reused_prefill(chunk_engine: Any, prompts: Any) -> None:
    from services.config import SpeculativeConfig
    from services.workers.spec.decode import build_setup

    prompt, chunks = prompts[0]
    setup = build_setup(SpeculativeConfig(method="ngram"), chunk_engine.model, chunk_engine.device, "")
    params = SamplingParams(max_tokens=16)
    chunk_engine.chunk_reuse.warm(prompt, chunks)
    plain = chunk_engine.generate_sync(prompt, params, spec=False, chunks=chunks)
    spec = chunk_engine.generate_sync(prompt, params, spec=setup, chunks=chunks)
    assert spec.text == plain.text  # greedy speculation never changes the output
    assert spec.stats.speculative["rounds"] > 0 and spec.stats.chunk_cache["chunk_hits"]["memory"] == 5


def test_the_shared_tier_is_never_called_under_the_step_lock(chunk_engine: Any, prompts: Any) -> None:
    """A slow Redis must delay one request, not every request's decode steps: each backend call the engine
    makes (reads of stored chunks, writes of computed ones) happens with its step lock free."""
    from cache.memory_backend import MemoryBackend

    store = chunk_engine.chunk_reuse.store
    kept, inner = store.backend, MemoryBackend()
    calls: list[tuple[str, bool]] = []

    class Spy:
        name = "redis"

        def __getattr__(self, attr: str) -> Any:
            fn = getattr(inner, attr)

            def call(*args: Any, **kwargs: Any) -> Any:
                calls.append((attr, chunk_engine._lock._held))
                return fn(*args, **kwargs)

            return call

    prompt, chunks = prompts[3]
    params = SamplingParams(max_tokens=4)
    store.backend = Spy()
    try:
        store.clear_memory()
        first = chunk_engine.generate_sync(prompt, params, chunks=chunks)  # misses: computed, then written
        store.clear_memory()
        second = chunk_engine.generate_sync(prompt, params, chunks=chunks)  # read back from the shared tier
    finally:
        store.backend = kept
    assert first.stats.chunk_cache["chunk_misses"] == 5
    assert second.stats.chunk_cache["chunk_hits"]["redis"] == 5 and second.stats.chunk_cache["prefix"] == "redis"
    ops = {op for op, _ in calls}
    assert {"get", "put"} <= ops, calls
    assert not [c for c in calls if c[1]], f"backend calls under the step lock: {calls}"


# -- tiers, serialisation, integrity ----------------------------------------------------------------


def _entry(seed: int = 0, n: int = 7) -> ChunkKV:
    g = torch.Generator().manual_seed(seed)
    ids = list(range(100 + seed, 100 + seed + n))
    key = chunk_key("fp", [1, 2, 3], ids, namespace="shared")
    return ChunkKV(key, "fp", ids, 3, torch.randn(4, 2, n, 8, generator=g), torch.randn(4, 2, n, 8, generator=g), 0.5)


def _store(backend: Any, memory_bytes: int = 1 << 20) -> ChunkKVStore:
    return ChunkKVStore(model="fp", shape=(4, 2, 8), dtype=torch.float32, memory_bytes=memory_bytes, backend=backend)


@pytest.fixture
def redis_backend(redis_url: str) -> Any:
    import uuid

    backend = RedisBackend(redis_url, prefix=f"ragyard-test-{uuid.uuid4().hex[:8]}:")
    yield backend
    for key in backend.client.scan_iter(match=backend.prefix + "*"):
        backend.client.delete(key)
    backend.close()


def test_serialisation_round_trip_and_checks() -> None:
    e = _entry()
    blob = serialize(e)
    back = deserialize(blob, key=e.key, model="fp", token_ids=e.token_ids, shape=(4, 2, 8), dtype=torch.float32)
    assert torch.equal(back.keys, e.keys) and torch.equal(back.values, e.values)
    assert back.base == 3 and back.compute_s == 0.5
    from cache.chunk_kv import CorruptEntryError

    bad = [
        {"key": "other"},
        {"model": "other"},
        {"token_ids": e.token_ids[:-1] + [0]},
        {"shape": (4, 3, 8)},
        {"dtype": torch.float16},
    ]
    for override in bad:
        kwargs: dict[str, Any] = {"key": e.key, "model": "fp", "token_ids": e.token_ids, "shape": (4, 2, 8)}
        kwargs["dtype"] = torch.float32
        kwargs.update(override)
        with pytest.raises(CorruptEntryError):
            deserialize(blob, **kwargs)
    flipped = bytearray(blob)
    flipped[-5] ^= 0x40  # a bit flip in the tensor bytes
    for broken in (bytes(flipped), blob[: len(blob) // 2], b"", b"\x00" * 8 + b"junk"):
        with pytest.raises(CorruptEntryError):
            deserialize(broken, key=e.key, model="fp", token_ids=e.token_ids, shape=(4, 2, 8), dtype=torch.float32)


def test_redis_tier_round_trip_and_corrupt_entries_dropped(redis_backend: Any) -> None:
    store = _store(redis_backend)
    e = _entry()
    written = store.put(e)
    assert written > e.nbytes  # tensors plus header
    store.clear_memory()
    got = store.get(e.key, e.token_ids)
    assert got.tier == "redis" and got.entry is not None and got.bytes_read == written
    assert torch.equal(got.entry.keys, e.keys)
    assert store.get(e.key, e.token_ids).tier == "memory"  # promoted
    # A corrupt blob in Redis is dropped and never served; the chunk is recomputed by get_or_compute.
    store.clear_memory()
    blob = bytearray(redis_backend.get(e.key))
    blob[-3] ^= 0x01
    redis_backend.put(e.key, bytes(blob))
    assert store.get(e.key, e.token_ids).entry is None
    assert redis_backend.get(e.key) is None
    calls = []

    def compute() -> ChunkKV:
        calls.append(1)
        return _entry()

    found, computed = store.get_or_compute(e.key, e.token_ids, compute)
    assert computed and calls == [1] and torch.equal(found.entry.values, e.values)  # type: ignore[union-attr]
    store.clear_memory()
    assert store.get(e.key, e.token_ids).tier == "redis"
    # Another prompt's ids under the same key (a collision) are refused, not served.
    store.clear_memory()
    assert store.get(e.key, [9, 9, 9, 9, 9, 9, 9]).entry is None


def test_unreachable_redis_is_a_miss_not_an_error() -> None:
    store = _store(RedisBackend("redis://127.0.0.1:1/0"))
    e = _entry()
    assert store.put(e) == 0  # memory tier still has it
    store.clear_memory()
    assert store.get(e.key, e.token_ids).entry is None


def test_concurrent_readers_and_writers_of_one_chunk(redis_backend: Any) -> None:
    # Several workers (each its own memory tier) share Redis; within a worker, askers of one chunk wait
    # for a single computation.
    stores = [_store(redis_backend) for _ in range(3)]
    e = _entry(seed=4)
    computed = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    seen: list[torch.Tensor] = []

    def compute() -> ChunkKV:
        with lock:
            computed.append(1)
        threading.Event().wait(0.05)
        return _entry(seed=4)

    def asker(store: ChunkKVStore) -> None:
        try:
            for _ in range(5):
                found, _ = store.get_or_compute(e.key, e.token_ids, compute)
                assert found.entry is not None
                seen.append(found.entry.keys)
                store.clear_memory()
                store.put(_entry(seed=4))  # writers race readers on the same Redis key
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=asker, args=(stores[i % 3],)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 45 and all(torch.equal(k, e.keys) for k in seen)
    assert 1 <= len(computed) <= 3  # at most one computation per worker before Redis has it


def test_single_flight_in_one_store() -> None:
    store = _store(None)
    e = _entry(seed=2)
    computed = []
    start = threading.Barrier(8)

    def compute() -> ChunkKV:
        computed.append(1)
        threading.Event().wait(0.1)
        return _entry(seed=2)

    def asker() -> None:
        start.wait()
        found, _ = store.get_or_compute(e.key, e.token_ids, compute)
        assert found.entry is not None and torch.equal(found.entry.values, e.values)

    threads = [threading.Thread(target=asker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert computed == [1]


def test_the_service_reports_chunk_reuse_in_trace_ready_and_metrics(chunk_engine: Any, local_service: Any) -> None:
    import asyncio

    from retrieval.policies.base import Question
    from services.deployments.worker import Worker
    from services.pipeline import AnswerRequest, RagService
    from services.pipeline.clients import local_worker

    # Whole passages: the chunks a prompt holds are the stored ones (sentences are cut for each question).
    base = local_service.config
    config = base.model_copy(update={"retrieval": base.retrieval.model_copy(update={"context": "passages"})})
    worker = Worker(config, engine=chunk_engine)
    service = RagService(config, local_service.retriever, {config.default_model.id: local_worker(worker)}, cache=None)
    req = AnswerRequest(question=Question(text="Which engine is the embedded default?"), policy="single", max_tokens=8)
    first = asyncio.run(service.answer(req))
    second = asyncio.run(service.answer(req))
    kv = second.cache.chunk_kv
    assert kv is not None and first.cache.chunk_kv is not None
    assert first.cache.chunk_kv["chunks"] == kv["chunks"] > 0
    assert kv["chunk_hits"]["memory"] == kv["chunks"] and kv["chunk_misses"] == 0
    assert 0 < kv["chunk_tokens_recomputed"] < kv["chunk_tokens"]
    assert worker.ready()["chunk_cache"]["recompute_fraction"] == 0.15
    texts = asyncio.run(service.worker_metrics())
    joined = "".join(texts)
    model = config.default_model.id
    hits = sample_sum(joined, "ragyard_chunk_kv_lookups_total", model=model, tier="memory", result="hit")
    assert hits >= kv["chunks"]
    assert sample_sum(joined, "ragyard_chunk_kv_tokens_total", model=model, kind="reused") > 0
    # Streaming goes through the same reuse.
    events = asyncio.run(_collect(service.stream(req)))
    last = events[-1].record
    assert last is not None and last.cache.chunk_kv is not None
    assert last.cache.chunk_kv["chunk_hits"]["memory"] == kv["chunks"]


async def _collect(stream: Any) -> list[Any]:
    return [e async for e in stream]
