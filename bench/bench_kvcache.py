"""`ragyard bench kvcache`: chunk-KV reuse against full prefill and prefix caching, side by side.

Prompts are the answer prompts the `single` policy builds for QA rows of the given files: the question and
its top-5 retrieved chunks (short-answer style, as `ragyard eval` scores them). First every chunk those
prompts retrieve is stored (warming), then every prompt is answered in each mode back to back, the order
rotating per prompt, so a slow spell on this shared machine hits the modes alike:

* ``full``: a plain prefill of the whole prompt (no cache);
* ``prefix``: the stored KV of the shared prompt prefix, the rest prefilled (what prefix caching gives
  when chunk sets differ);
* ``blend``: stored prefix and chunk KV, re-aligned, with the configured fraction of chunk tokens
  recomputed (memory tier);
* ``blend_redis`` (with a Redis tier): the same after this prompt's entries are taken out of the memory
  tier, so every entry comes from Redis.

TTFT speed-ups are medians of per-prompt ratios. The eviction table replays a Zipf workload over the
chunks actually stored (their real sizes and measured compute times) against LRU and the cost-aware
policy at several memory sizes.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from core.capabilities import CHUNK_CACHE
from retrieval.generation import SamplingParams
from services.config import AppConfig

MODES = ("full", "prefix", "blend")
ZIPF_EXPONENTS = (0.8, 1.0, 1.2)
ZIPF_CAPACITIES = (0.05, 0.1, 0.2, 0.4)


def rag_prompts(engine: Any, service: Any, rows: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    from retrieval.prompts import build_messages, fit_passages, prompt_chunks

    async def build() -> list[dict[str, Any]]:
        out = []
        for row in rows:
            passages = fit_passages(
                await service.retriever.search(row["question"], top_k), service.config.retrieval.max_context_tokens
            )
            messages = build_messages(row["question"], passages, style="short")
            out.append(
                {
                    "row": row,
                    "prompt": engine.render_chat(messages),
                    "chunks": prompt_chunks(passages),
                    "passages": passages,
                }
            )
        return out

    return asyncio.run(build())


def bench_kvcache(
    config: AppConfig,
    data: list[str],
    out: str | Path,
    *,
    limit: int = 50,
    max_tokens: int = 32,
    top_k: int = 5,
    fraction: float | None = None,
    redis_url: str | None = None,
    zipf_requests: int = 20000,
    seed: int = 0,
    vllm_prompts: int = 20,
    sweep: tuple[float, ...] = (),
) -> str:
    from bench.harness import Evaluator, read_rows

    redis_url = redis_url if redis_url is not None else os.environ.get("REDIS_URL")
    model = config.default_model
    if CHUNK_CACHE not in model.capabilities:
        raise ValueError(
            f"bench kvcache measures the chunk-KV cache, which engine {model.engine} lacks; "
            "configure models[0].engine: torch"
        )
    chunk_cfg = model.chunk_cache.model_copy(
        update={
            "enabled": True,
            "backend_url": "memory://",  # the Redis tier is attached below, in a namespace of its own
            "memory_bytes": max(model.chunk_cache.memory_bytes, 8 << 30),
            **({"recompute_fraction": fraction} if fraction is not None else {}),
        }
    )
    models = [model.model_copy(update={"chunk_cache": chunk_cfg}), *config.models[1:]]
    cfg = config.model_copy(update={"models": models})
    evaluator = Evaluator(cfg)
    engine: Any = evaluator.worker.engine
    reuse = engine.chunk_reuse
    files: list[tuple[str, list[dict[str, Any]]]] = []
    for path in data:
        rows = read_rows(path, limit)
        files.append((path, rag_prompts(engine, evaluator.service_for(path), rows, top_k)))
    if redis_url:
        # A namespace of this run's own: no hits from earlier runs, and a shared Redis keeps its entries.
        import uuid

        from cache.redis_backend import RedisBackend

        reuse.store.backend = RedisBackend(redis_url, prefix=f"ragyard-bench-{uuid.uuid4().hex[:8]}:")
    try:
        started = time.perf_counter()
        entries: dict[str, Any] = {}
        for _, prompts in files:
            for p in prompts:
                reuse.warm(p["prompt"], p["chunks"])
        for key in reuse.store.memory.keys():
            e = reuse.store.memory.get(key)
            if e is not None:
                entries[key] = e
        warm_s = time.perf_counter() - started
        params = SamplingParams(max_tokens=max_tokens, stop=("\n",))
        modes = MODES + (("blend_redis",) if reuse.store.backend is not None else ())
        per_file: dict[str, Any] = {}
        all_runs: list[dict[str, Any]] = []
        for path, prompts in files:
            runs = []
            for i, p in enumerate(prompts):
                runs.append(_measure(engine, p, params, modes, i, sweep))
                if (i + 1) % 10 == 0 or i + 1 == len(prompts):
                    print(f"  kvcache {Path(path).name}: {i + 1}/{len(prompts)}", flush=True)  # noqa: T201
            per_file[Path(path).name] = _summarise(runs)
            all_runs += [{"file": Path(path).name, **r} for r in runs]
        result: dict[str, Any] = {
            "model": model.id,
            "prompts": len(all_runs),
            "top_k": top_k,
            "max_tokens": max_tokens,
            "chunk_cache": reuse.describe(),
            "warm": {
                "entries": len(entries),
                "bytes": sum(e.nbytes for e in entries.values()),
                "seconds": round(warm_s, 2),
            },
            **_summarise(all_runs),
            "files": per_file,
            "eviction_zipf": zipf_table(
                [(e.nbytes, e.compute_s) for e in entries.values()], requests=zipf_requests, seed=seed
            ),
        }
        if vllm_prompts > 0:
            prompts_for_vllm = [p for _, ps in files for p in ps][:vllm_prompts]
            engine.close()  # the torch model's memory goes back before vLLM starts
            result["vllm_prefix_cache"] = bench_vllm_prefix(cfg, prompts_for_vllm, params)
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "kvcache.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        # Every prompt's answer in every mode, so which answers moved between modes (or between two runs) can be
        # read back, not only the means.
        with (out_dir / "answers.jsonl").open("w", encoding="utf-8") as f:
            for r in all_runs:
                modes_of = {m: {k: v for k, v in r[m].items() if k != "report"} for m in r if isinstance(r[m], dict)}
                row = {"file": r["file"], "id": r["id"], "answers": r["answers"], "modes": modes_of}
                f.write(json.dumps(row) + "\n")
        table = kvcache_table(result)
        (out_dir / "kvcache.md").write_text(table + "\n", encoding="utf-8")
        return table
    finally:
        if reuse.store.backend is not None:
            _clear_backend(reuse.store.backend)


def _clear_backend(backend: Any) -> None:
    client = getattr(backend, "client", None)
    if client is None:
        return
    for key in client.scan_iter(match=backend.prefix + "ckv:*"):
        client.delete(key)


def _measure(
    engine: Any, p: dict[str, Any], params: SamplingParams, modes: tuple[str, ...], i: int, sweep: tuple[float, ...]
) -> dict[str, Any]:
    from core.scoring import score

    reuse = engine.chunk_reuse
    order = list(modes[:3])
    order = order[i % 3 :] + order[: i % 3]
    if "blend_redis" in modes:
        order.append("blend_redis")  # last: it takes this prompt's entries out of the memory tier
    run: dict[str, Any] = {"id": p["row"].get("id"), "answers": p["row"]["answers"]}
    # Other recompute fractions (the quality/speed trade-off) go between the main modes and blend_redis.
    order[3:3] = [f"blend@{f:g}" for f in sweep]
    for mode in order:
        if mode == "blend_redis":
            reuse.drop_from_memory(p["prompt"], p["chunks"])
        kwargs: dict[str, Any] = {} if mode == "full" else {"chunks": p["chunks"]}
        if mode == "prefix":
            kwargs["reuse"] = "prefix"
        if mode.startswith("blend@"):
            kwargs["fraction"] = float(mode.split("@")[1])
        res = engine.generate_sync(p["prompt"], params, spec=False, **kwargs)
        em, f1, _ = score(res.text.strip(), p["row"]["answers"])
        run[mode] = {
            "ttft_s": res.stats.ttft_s,
            "first_token": res.stats.first_token,
            "answer": res.text.strip(),
            "f1": f1,
            "em": em,
            "report": res.stats.chunk_cache,
        }
    return run


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else 0.0


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return {}
    modes = [m for m in ("full", "prefix", "blend", "blend_redis") if m in runs[0]]
    out: dict[str, Any] = {
        "prompts": len(runs),
        "ttft_s_median": {m: _median([r[m]["ttft_s"] for r in runs]) for m in modes},
        # Each prompt's TTFT per mode, so the paired ratios behind the speedups can be checked.
        "ttft_s_per_prompt": [{m: round(r[m]["ttft_s"], 6) for m in modes} for r in runs],
        "ttft_speedup": _median([r["full"]["ttft_s"] / r["blend"]["ttft_s"] for r in runs]),
        "ttft_speedup_prefix": _median([r["full"]["ttft_s"] / r["prefix"]["ttft_s"] for r in runs]),
    }
    if "blend_redis" in modes:
        out["ttft_speedup_redis"] = _median([r["full"]["ttft_s"] / r["blend_redis"]["ttft_s"] for r in runs])
    reports = [r["blend"]["report"] for r in runs]
    chunk_tokens = sum(rep["chunk_tokens"] for rep in reports)
    out["recompute_fraction"] = round(sum(rep["chunk_tokens_recomputed"] for rep in reports) / chunk_tokens, 4)
    out["tokens_computed_share"] = round(
        sum(rep["tokens_computed"] for rep in reports) / sum(rep["prompt_tokens"] for rep in reports), 4
    )
    for m in modes:
        key = "f1_reuse" if m == "blend" else f"f1_{m}"
        out[key] = round(statistics.fmean(r[m]["f1"] for r in runs), 4)
    out["f1_delta_points"] = round(100 * (out["f1_reuse"] - out["f1_full"]), 2)
    out["first_token_agreement"] = round(
        statistics.fmean(float(r["blend"]["first_token"] == r["full"]["first_token"]) for r in runs), 4
    )
    out["answer_agreement"] = round(
        statistics.fmean(float(r["blend"]["answer"] == r["full"]["answer"]) for r in runs), 4
    )
    hit_rates: dict[str, Any] = {}
    for m in ("blend", "blend_redis"):
        if m not in modes:
            continue
        reps = [r[m]["report"] for r in runs]
        lookups = sum(rep["chunks"] for rep in reps)
        hit_rates[m] = {
            "memory": round(sum(rep["chunk_hits"]["memory"] for rep in reps) / lookups, 4),
            "redis": round(sum(rep["chunk_hits"]["redis"] for rep in reps) / lookups, 4),
            "miss": round(sum(rep["chunk_misses"] for rep in reps) / lookups, 4),
            "bytes_read_per_prompt": int(statistics.fmean(rep["bytes_read"] for rep in reps)),
        }
    out["hit_rates"] = hit_rates
    sweep: dict[str, Any] = {}
    for mode in [m for m in runs[0] if m.startswith("blend@")]:
        reps = [r[mode]["report"] for r in runs]
        sweep[mode.split("@")[1]] = {
            "ttft_speedup": _median([r["full"]["ttft_s"] / r[mode]["ttft_s"] for r in runs]),
            "recompute_fraction": round(
                sum(rep["chunk_tokens_recomputed"] for rep in reps) / sum(rep["chunk_tokens"] for rep in reps), 4
            ),
            "f1": round(statistics.fmean(r[mode]["f1"] for r in runs), 4),
            "f1_delta_points": round(100 * (statistics.fmean(r[mode]["f1"] for r in runs) - out["f1_full"]), 2),
            "first_token_agreement": round(
                statistics.fmean(float(r[mode]["first_token"] == r["full"]["first_token"]) for r in runs), 4
            ),
        }
    if sweep:
        out["fraction_sweep"] = sweep
    return out


def bench_vllm_prefix(config: AppConfig, prompts: list[dict[str, Any]], params: SamplingParams) -> dict[str, Any]:
    """vLLM's prefix-cache hit rate when the same chunk set comes back in another order.

    For every prompt two questions arrive with the same retrieved chunks: the question as it is, with the
    chunks in relevance order, then a follow-up ("... Answer in one word.") for which retrieval ranked
    the same chunks the other way round. In relevance order the second prompt shares only the text
    before its first chunk with the first; in canonical (document) order it shares everything up to
    the question. The hit rate is the prompt tokens vLLM served from its cache over all prompt tokens."""
    import importlib.util

    from retrieval.prompts import build_messages, canonical_order
    from services.config import ModelConfig

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vLLM is not installed (make install-vllm)"}
    from services.workers.engines.vllm_engine import VllmEngine

    base = config.default_model.model_dump()
    base.update(engine="vllm", speculative=None, chunk_cache={"enabled": False})
    out: dict[str, Any] = {"prompts": len(prompts), "questions_per_prompt": 2}
    for order_name in ("relevance", "canonical"):
        # A fresh engine per ordering: hits from one ordering must not serve the other.
        engine = VllmEngine(ModelConfig.model_validate(base), cache_dir=config.cache_dir)
        try:
            cached = total = second_cached = second_total = 0
            for p in prompts:
                question = p["row"]["question"]
                first, second = list(p["passages"]), list(reversed(p["passages"]))
                if order_name == "canonical":
                    first, second = canonical_order(first), canonical_order(second)
                for n, (q, passages) in enumerate(((question, first), (question + " Answer in one word.", second))):
                    prompt = engine.render_chat(build_messages(q, passages, style="short"))
                    res = asyncio.run(engine.generate(prompt, params))
                    hit = res.stats.cached_prompt_tokens or 0
                    cached += hit
                    total += res.stats.prompt_tokens
                    if n == 1:
                        second_cached += hit
                        second_total += res.stats.prompt_tokens
            out[order_name] = {
                "hit_rate": round(cached / total, 4) if total else 0.0,
                "second_question_hit_rate": round(second_cached / second_total, 4) if second_total else 0.0,
            }
        finally:
            engine.close()
    return out


def zipf_table(
    entries: list[tuple[int, float]],
    *,
    requests: int = 20000,
    seed: int = 0,
    exponents: tuple[float, ...] = ZIPF_EXPONENTS,
    capacities: tuple[float, ...] = ZIPF_CAPACITIES,
) -> list[dict[str, Any]]:
    """Hit rate and recompute time saved by each eviction policy on Zipf-popular chunk requests.

    ``entries`` are (bytes, compute seconds) of real chunks; popularity ranks are assigned at random
    (seeded), independent of size. Capacities are shares of all entries' bytes."""
    import numpy as np

    from cache.eviction import ByteBoundedCache

    if not entries:
        return []
    rng = np.random.default_rng(seed)
    n = len(entries)
    total = sum(b for b, _ in entries)
    rows = []
    for s in exponents:
        weights = 1.0 / np.arange(1, n + 1) ** s
        ranks = rng.permutation(n)  # ranks[i]: the entry holding popularity rank i
        stream = ranks[rng.choice(n, size=requests, p=weights / weights.sum())]
        for share in capacities:
            row: dict[str, Any] = {"zipf_s": s, "capacity_share": share}
            for policy in ("lru", "craft"):
                cache: ByteBoundedCache[int] = ByteBoundedCache(int(total * share), policy)
                hits, saved, cost_all = 0, 0.0, 0.0
                for i in stream:
                    nbytes, cost = entries[int(i)]
                    cost_all += cost
                    if cache.get(str(i)) is not None:
                        hits += 1
                        saved += cost
                    else:
                        cache.put(str(i), int(i), nbytes, cost)
                row[policy] = {"hit_rate": round(hits / requests, 4), "compute_saved": round(saved / cost_all, 4)}
            rows.append(row)
    return rows


def kvcache_table(result: dict[str, Any]) -> str:
    """The markdown summary of a ``kvcache.json`` (``python -m bench.bench_kvcache FILE``
    prints it again)."""
    med = result["ttft_s_median"]
    lines = [
        f"Chunk-KV reuse, {result['prompts']} prompts (question + top-{result['top_k']} chunks), "
        f"recompute fraction {result['chunk_cache']['recompute_fraction']}",
        "",
        "| mode | TTFT median s | speedup vs full (median of ratios) | F1 |",
        "| --- | --- | --- | --- |",
        f"| full prefill | {med['full']:.3f} | 1.00 | {result['f1_full']:.3f} |",
        f"| prefix cache only | {med['prefix']:.3f} | {result['ttft_speedup_prefix']:.2f} "
        f"| {result['f1_prefix']:.3f} |",
        f"| chunk-KV reuse (memory) | {med['blend']:.3f} | {result['ttft_speedup']:.2f} | {result['f1_reuse']:.3f} |",
    ]
    if "blend_redis" in med:
        lines.append(
            f"| chunk-KV reuse (Redis) | {med['blend_redis']:.3f} | {result['ttft_speedup_redis']:.2f} "
            f"| {result['f1_blend_redis']:.3f} |"
        )
    lines += [
        "",
        f"recomputed chunk tokens: {result['recompute_fraction']:.3f}; first-token agreement with full prefill: "
        f"{result['first_token_agreement']:.3f}; F1 change: {result['f1_delta_points']:+.2f} points",
    ]
    if result.get("fraction_sweep"):
        lines += [
            "",
            "| recompute fraction | TTFT speedup | F1 | F1 change (points) | first-token agreement |",
            "| --- | --- | --- | --- | --- |",
            f"| {result['recompute_fraction']:.2f} | {result['ttft_speedup']:.2f} | {result['f1_reuse']:.3f} "
            f"| {result['f1_delta_points']:+.2f} | {result['first_token_agreement']:.3f} |",
        ]
        for f in result["fraction_sweep"].values():
            lines.append(
                f"| {f['recompute_fraction']:.2f} | {f['ttft_speedup']:.2f} | {f['f1']:.3f} "
                f"| {f['f1_delta_points']:+.2f} | {f['first_token_agreement']:.3f} |"
            )
    lines += [
        "",
        "| file | n | F1 full | F1 reuse | change (points) | TTFT speedup |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in result["files"].items():
        lines.append(
            f"| {name} | {f['prompts']} | {f['f1_full']:.3f} | {f['f1_reuse']:.3f} "
            f"| {f['f1_delta_points']:+.2f} | {f['ttft_speedup']:.2f} |"
        )
    vp = result.get("vllm_prefix_cache")
    if vp and "relevance" in vp:
        lines += [
            "",
            f"vLLM prefix cache, {vp['prompts']} chunk sets asked twice in different orders "
            "(hit rate over all prompt tokens / over the second question's):",
            "",
            "| chunk order | hit rate | second question |",
            "| --- | --- | --- |",
        ]
        for name in ("relevance", "canonical"):
            lines.append(f"| {name} | {vp[name]['hit_rate']:.3f} | {vp[name]['second_question_hit_rate']:.3f} |")
    lines += [
        "",
        "Eviction on a Zipf workload over the stored chunks (hit rate / share of recompute time saved):",
        "",
        "| zipf s | memory (share of bytes) | LRU | craft |",
        "| --- | --- | --- | --- |",
    ]
    for row in result["eviction_zipf"]:
        lru, craft = row["lru"], row["craft"]
        lines.append(
            f"| {row['zipf_s']} | {row['capacity_share']:.0%} | {lru['hit_rate']:.3f} / {lru['compute_saved']:.3f} "
            f"| {craft['hit_rate']:.3f} / {craft['compute_saved']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(kvcache_table(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))  # noqa: T201
