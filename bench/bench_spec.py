"""`ragyard bench spec`: speculative decoding on real RAG prompts, with and without, side by side.

Prompts are the chat-style answer prompts the `single` policy builds: a question of the given files and
its top-5 retrieved passages. The acceptance predictors for adaptive K are fitted on prompts of the
training half; speed is measured on the held-out half. For every prompt, plain decoding and every draft
setup run back to back (order rotating), so a slow spell on this shared machine hits them alike; the
speedup is the median over prompts of the per-prompt decode tokens/s ratio.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from retrieval.generation import SamplingParams
from services.config import AppConfig, SpeculativeConfig

DRAFTERS = ("ngram", "self_draft", "draft_model", "hybrid")
# Stop thresholds of adaptive K tried on the calibration prompts; the fastest is measured.
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def rag_prompts(engine: Any, service: Any, rows: list[dict[str, Any]], top_k: int) -> list[str]:
    from retrieval.prompts import build_messages

    async def build() -> list[str]:
        out = []
        for row in rows:
            passages = await service.retriever.search(row["question"], top_k)
            out.append(engine.render_chat(build_messages(row["question"], passages, style="chat")))
        return out

    return asyncio.run(build())


def decode(engine: Any, prompt: str, params: SamplingParams, setup: Any) -> dict[str, Any]:
    """Token ids and decode time (every token after the first) of one greedy completion."""
    from services.workers.spec.decode import SpecStats

    stats = SpecStats(record_samples=True)
    ids: list[int] = []
    decode_s = 0.0
    started = time.perf_counter()
    for token, spent in engine.iter_tokens(engine.encode(prompt), params, spec=setup, spec_stats=stats):
        if ids:
            decode_s += spent
        ids.append(token)
        if token in engine.eos_ids:
            break
    return {"ids": ids, "decode_s": decode_s, "total_s": time.perf_counter() - started, "stats": stats}


def bench_spec(
    config: AppConfig,
    data: list[str],
    out: str | Path,
    *,
    seed: int = 0,
    limit: int = 8,
    calibration_limit: int = 4,
    max_tokens: int = 64,
    ks: tuple[int, ...] = (2, 4, 6),
    thresholds: tuple[float, ...] = THRESHOLDS,
    drafters: tuple[str, ...] = DRAFTERS,
    self_draft_layers: int = 8,
    top_k: int = 5,
    vllm: bool = True,
    vllm_k: int = 4,
    vllm_one_at_a_time: bool = False,
) -> str:
    from bench.harness import Evaluator, read_rows
    from router.labels import split_rows

    check_arguments(ks, drafters, thresholds)
    if vllm_k < 1:
        raise ValueError("--vllm-k needs a positive candidate length")
    if config.default_model.engine != "torch":
        # The drafters, the verify widths and the acceptance predictors are the torch engine's.
        raise ValueError("bench spec measures the torch engine; configure models[0].engine: torch")
    evaluator = Evaluator(config)
    engine: Any = evaluator.worker.engine
    calib_prompts: list[str] = []
    test_prompts: list[str] = []
    for path in data:
        train, test = split_rows(read_rows(path), seed)
        service = evaluator.service_for(path)
        calib_prompts += rag_prompts(engine, service, train[:calibration_limit], top_k)
        test_prompts += rag_prompts(engine, service, test[:limit], top_k)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The prompts as measured: `python -m bench.bench_spec --prompts` replays them elsewhere.
    prompts = {"calibration": calib_prompts, "measured": test_prompts, "top_k": top_k}
    (out_dir / "prompts.json").write_text(json.dumps(prompts) + "\n", encoding="utf-8")
    params = SamplingParams(max_tokens=max_tokens)
    torch_block = measure_torch(
        engine,
        calib_prompts,
        test_prompts,
        params,
        ks,
        thresholds,
        drafters,
        self_draft_layers,
        config.cache_dir,
        out_dir,
        # The draft_model drafter is the first model's configured draft (a packaged pair such as Qwen2.5-Coder
        # 0.5B for 1.5B), else the packaged SmolLM2.
        draft_model=spec.model
        if (spec := config.default_model.speculative) and spec.method in ("draft_model", "hybrid")
        else None,
    )
    result: dict[str, Any] = {
        "model": config.default_model.id,
        "prompts": {"measured": len(test_prompts), "calibration": len(calib_prompts), "top_k": top_k},
        "max_tokens": max_tokens,
        "plain_decode_tokens_per_s_median": torch_block.pop("plain_decode_tokens_per_s_median"),
        "predictors": torch_block.pop("predictors"),
        "engines": {"torch": torch_block},
    }
    if vllm:
        from bench.bench_spec_vllm import bench_vllm

        for worker in evaluator.workers.values():
            worker.engine.close()  # the torch models' memory goes back before vLLM starts
        result["engines"]["vllm"] = bench_vllm(config, test_prompts, params, vllm_k, one_at_a_time=vllm_one_at_a_time)
    return write_result(result, out_dir)


def check_arguments(ks: tuple[int, ...], drafters: tuple[str, ...], thresholds: tuple[float, ...] = THRESHOLDS) -> None:
    if not thresholds or not all(0 < t < 1 for t in thresholds):
        raise ValueError("--thresholds takes stop thresholds between 0 and 1, e.g. 0.3,0.5,0.7,0.9")
    unknown = set(drafters) - set(DRAFTERS)
    if unknown or not drafters:
        raise ValueError(f"--drafters takes {', '.join(DRAFTERS)}; got {', '.join(sorted(unknown)) or 'none'}")
    if not ks or min(ks) < 1:
        raise ValueError("--k needs positive candidate lengths, e.g. 2,4,6")


def write_result(result: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spec.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = spec_table(result)
    (out_dir / "spec.md").write_text(table, encoding="utf-8")
    return table


def tokens_per_s(run: dict[str, Any]) -> float:
    """Decode tokens/s of one run: every token after the first, over the time they took."""
    return (len(run["ids"]) - 1) / run["decode_s"] if run["decode_s"] > 0 and len(run["ids"]) > 1 else 0.0


def measure_torch(
    engine: Any,
    calib_prompts: list[str],
    test_prompts: list[str],
    params: SamplingParams,
    ks: tuple[int, ...],
    thresholds: tuple[float, ...],
    drafters: tuple[str, ...],
    self_draft_layers: int,
    cache_dir: str,
    out_dir: Path,
    *,
    draft_model: str | None = None,
) -> dict[str, Any]:
    """The torch engine plain and with every drafter at every K and adaptive K, side by side per prompt."""
    from services.workers.spec.adaptive import fit_predictor
    from services.workers.spec.decode import SpecSetup, build_setup

    def spec_config(method: str, **extra: Any) -> SpeculativeConfig:
        if method in ("draft_model", "hybrid"):
            extra["model"] = draft_model
        return SpeculativeConfig.model_validate({"method": method, "self_draft_layers": self_draft_layers, **extra})

    # Fit each drafter's acceptance predictor on the training prompts at the largest K, then pick the stop
    # threshold that decodes fastest on those prompts. SpecDec++'s rule stops at P(some draft rejected) > h;
    # the best h depends on what one more drafted token costs (nearly nothing for prompt lookup, a forward
    # pass of the draft for a model), so it is measured per drafter rather than fixed.
    setups: dict[str, SpecSetup] = {}
    predictors: dict[str, Any] = {}
    calib_plain = [decode(engine, prompt, params, None) for prompt in calib_prompts] if len(thresholds) > 1 else []
    for method in drafters:
        probe = build_setup(spec_config(method, num_speculative_tokens=max(ks)), engine.model, engine.device, cache_dir)
        samples: list[tuple[list[float], bool]] = []
        for prompt in calib_prompts:
            samples += decode(engine, prompt, params, probe)["stats"].samples
        names = probe.new_drafter().feature_names
        predictor = fit_predictor(method, names, [f for f, _ in samples], [a for _, a in samples])
        predictor.save(out_dir / "predictors" / f"{method}.json")

        def adaptive_setup(threshold: float, method: str = method, predictor: Any = predictor) -> SpecSetup:
            setup = build_setup(
                spec_config(method, num_speculative_tokens=max(ks), adaptive=True, stop_threshold=threshold),
                engine.model,
                engine.device,
                cache_dir,
            )
            setup.predictor = predictor
            return setup

        grid: dict[str, float] = {}
        if len(thresholds) > 1:
            for threshold in thresholds:
                trial = adaptive_setup(threshold)
                ratios = []
                for prompt, plain_run in zip(calib_prompts, calib_plain, strict=True):
                    run = decode(engine, prompt, params, trial)
                    if tokens_per_s(plain_run) > 0 and tokens_per_s(run) > 0:
                        ratios.append(tokens_per_s(run) / tokens_per_s(plain_run))
                grid[str(threshold)] = round(statistics.median(ratios), 4) if ratios else 0.0
            chosen = float(max(grid, key=lambda t: grid[t]))
        else:
            chosen = thresholds[0]
        predictors[method] = {
            "samples": len(samples),
            "accept_rate": round(sum(a for _, a in samples) / len(samples), 4) if samples else 0.0,
            "weights": dict(zip(names, [round(w, 4) for w in predictor.weights], strict=True)),
            "bias": round(predictor.bias, 4),
            "threshold_speedups_on_calibration": grid,
            "stop_threshold": chosen,
        }
        for k in ks:
            setups[f"{method} K={k}"] = build_setup(
                spec_config(method, num_speculative_tokens=k), engine.model, engine.device, cache_dir
            )
        # The same K without padding each verify to its cheapest width: what the padding buys.
        setups[f"{method} K={max(ks)} unpadded"] = build_setup(
            spec_config(method, num_speculative_tokens=max(ks), pad_verify=False),
            engine.model,
            engine.device,
            cache_dir,
        )
        setups[f"{method} adaptive"] = adaptive_setup(chosen)
        cost_setup = build_setup(
            spec_config(method, num_speculative_tokens=max(ks), adaptive=True, stop_rule="cost"),
            engine.model,
            engine.device,
            cache_dir,
        )
        cost_setup.predictor = predictor
        setups[f"{method} cost-aware"] = cost_setup

    runs: dict[str, list[dict[str, Any]]] = {"plain": [], **{name: [] for name in setups}}
    order = ["plain", *setups]
    for n, prompt in enumerate(test_prompts, start=1):
        shift = n % len(order)
        for name in order[shift:] + order[:shift]:
            runs[name].append(decode(engine, prompt, params, None if name == "plain" else setups[name]))
        print(f"  spec {n}/{len(test_prompts)}", flush=True)  # noqa: T201

    tps = tokens_per_s
    plain = runs["plain"]
    results: dict[str, Any] = {}
    for name, setup in setups.items():
        rs = runs[name]
        ratios = [tps(r) / tps(p) for r, p in zip(rs, plain, strict=True) if tps(p) > 0 and tps(r) > 0]
        drafted = sum(r["stats"].drafted for r in rs)
        accepted = sum(r["stats"].accepted for r in rs)
        rounds = sum(r["stats"].rounds for r in rs)
        results[name] = {
            "setup": setup.describe(),
            "speedup": round(statistics.median(ratios), 4) if ratios else 0.0,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
            "mean_accepted_len": round(accepted / rounds, 4) if rounds else 0.0,
            "identical_greedy": round(sum(r["ids"] == p["ids"] for r, p in zip(rs, plain, strict=True)) / len(rs), 4),
            "decode_tokens_per_s_median": round(statistics.median(tps(r) for r in rs), 2),
        }

    def adaptive(name: str) -> bool:
        return name.endswith(" adaptive") or name.endswith(" cost-aware")

    fixed = {k: v for k, v in results.items() if not adaptive(k)}
    best_fixed = max(fixed, key=lambda k: fixed[k]["speedup"])
    best_adaptive = max((k for k in results if adaptive(k)), key=lambda k: results[k]["speedup"])
    method = best_fixed.split()[0]
    same_method_adaptive = max(
        (f"{method} adaptive", f"{method} cost-aware"), key=lambda k: results[k]["speedup"] if k in results else 0.0
    )
    best_speedup = max(results[best_fixed]["speedup"], results[best_adaptive]["speedup"])
    summary = {
        "best_fixed": best_fixed,
        "best_fixed_speedup": results[best_fixed]["speedup"],
        "best_adaptive": best_adaptive,
        "best_adaptive_speedup": results[best_adaptive]["speedup"],
        "adaptive_vs_best_fixed": round(results[same_method_adaptive]["speedup"] / results[best_fixed]["speedup"], 4)
        if results[best_fixed]["speedup"]
        else 0.0,
        "targets": {
            "cpu_1_5x": best_speedup >= 1.5,
            "best_drafter_2x": best_speedup >= 2.0,
            "adaptive_5pct_over_best_fixed_k": results[same_method_adaptive]["speedup"]
            >= 1.05 * results[best_fixed]["speedup"],
        },
    }
    from services.workers.spec.costs import measure

    return {
        "device": str(engine.device),
        "verify_width_costs": measure(engine.model, engine.device, max(8, max(ks) + 1)).describe(),
        "plain_decode_tokens_per_s_median": round(statistics.median(tps(p) for p in plain), 2),
        "predictors": predictors,
        "setups": results,
        "summary": summary,
    }


def spec_table(result: dict[str, Any]) -> str:
    lines = [
        "| engine | setup | speedup | acceptance | mean accepted | identical greedy | decode tok/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| torch | plain | 1.00 | - | - | - | {result['plain_decode_tokens_per_s_median']} |",
    ]
    for engine, block in result["engines"].items():
        if "skipped" in block:
            lines.append(f"| {engine} | skipped: {block['skipped']} | - | - | - | - | - |")
            continue
        if engine != "torch":
            lines.append(f"| {engine} | plain | 1.00 | - | - | - | {block['plain_decode_tokens_per_s_median']} |")
        for name, r in block["setups"].items():
            lines.append(
                f"| {engine} | {name} | {r['speedup']:.2f} | {r['acceptance_rate']:.2f} | "
                f"{r['mean_accepted_len']:.2f} | {r['identical_greedy']:.2f} | {r['decode_tokens_per_s_median']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Replay a bench's prompts on another host (a GPU machine without the serving stack):

    python -m bench.bench_spec --prompts results/spec/prompts.json --model-path DIR \\
        --device cuda --out DIR2
    """
    import argparse

    from services.config import ModelConfig
    from services.workers.engines.torch_engine import TorchEngine

    ap = argparse.ArgumentParser(prog="python -m bench.bench_spec")
    ap.add_argument("--prompts", required=True, help="prompts.json written by `ragyard bench spec`")
    ap.add_argument("--model-path", required=True, help="HF folder of the target model")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--k", default="2,4,6")
    ap.add_argument("--thresholds", default=",".join(str(t) for t in THRESHOLDS))
    ap.add_argument("--drafters", default=",".join(DRAFTERS))
    ap.add_argument("--self-draft-layers", type=int, default=8)
    ap.add_argument("--draft-model", help="draft_model drafter's HF folder (default: the target itself)")
    args = ap.parse_args(argv)
    try:
        ks = tuple(int(k) for k in args.k.split(","))
        thresholds = tuple(float(t) for t in args.thresholds.split(","))
    except ValueError:
        ap.error(f"--k takes integers and --thresholds numbers, comma-separated; got {args.k!r}, {args.thresholds!r}")
    drafters = tuple(d.strip() for d in args.drafters.split(",") if d.strip())
    check_arguments(ks, drafters, thresholds)
    prompts = json.loads(Path(args.prompts).read_text(encoding="utf-8"))
    model = ModelConfig(path=args.model_path, device=args.device, dtype=args.dtype)
    engine = TorchEngine(model, cache_dir=str(Path(args.out) / "cache"))
    # Unmeasured warm-up: the first passes on a GPU pay for kernel selection and allocator growth.
    decode(engine, prompts["measured"][0], SamplingParams(max_tokens=8), None)
    params = SamplingParams(max_tokens=args.max_tokens)
    block = measure_torch(
        engine,
        prompts["calibration"],
        prompts["measured"],
        params,
        ks,
        thresholds,
        drafters,
        args.self_draft_layers,
        str(Path(args.out) / "cache"),
        Path(args.out),
        draft_model=args.draft_model or args.model_path,
    )
    result = {
        "model": args.model_path,
        "prompts": {"measured": len(prompts["measured"]), "calibration": len(prompts["calibration"])},
        "max_tokens": args.max_tokens,
        "dtype": args.dtype,
        "plain_decode_tokens_per_s_median": block.pop("plain_decode_tokens_per_s_median"),
        "predictors": block.pop("predictors"),
        "engines": {"torch": block},
    }
    print(write_result(result, Path(args.out)))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
