"""`ragyard bench ...`: benchmarks that write JSON plus a short markdown table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.config import AppConfig, ModelConfig

if TYPE_CHECKING:
    from router.routing import ConfigRouter
from bench.harness import percentile, read_rows


def run_bench(what: str, config: AppConfig, args: argparse.Namespace) -> str:
    if what == "router":
        if args.leave_one_out:
            from bench.router_lodo import leave_one_dataset_out

            return leave_one_dataset_out(config, args.out, seed=args.seed)
        return bench_router(config, args.data or [], args.out, repeats=args.repeats)
    if what == "policies":
        from bench.bench_policies import POLICY_ORDER, bench_policies

        if not args.data:
            raise ValueError("bench policies needs --data FILE (repeatable)")
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        policies = tuple(p.strip() for p in args.policies.split(",") if p.strip()) if args.policies else POLICY_ORDER
        unknown = set(policies) - set(POLICY_ORDER)
        if unknown:
            raise ValueError(f"--policies takes {', '.join(POLICY_ORDER)}; got {', '.join(sorted(unknown))}")
        return bench_policies(
            config,
            args.data,
            args.out,
            seed=args.seed,
            limit=args.limit,
            max_tokens=args.max_tokens or 32,
            policies=policies,
            models=models or [m.id for m in config.models],
        )
    if what == "spec":
        from bench.bench_spec import bench_spec

        if not args.data:
            raise ValueError("bench spec needs --data FILE (repeatable)")
        return bench_spec(
            config,
            args.data,
            args.out,
            seed=args.seed,
            limit=args.limit or 8,
            calibration_limit=args.calibration_limit,
            max_tokens=args.max_tokens or 64,
            ks=tuple(number_list(args.k, int, "--k")),
            thresholds=tuple(number_list(args.thresholds, float, "--thresholds")),
            drafters=tuple(d.strip() for d in args.drafters.split(",") if d.strip()),
            self_draft_layers=args.self_draft_layers,
            vllm=not args.no_vllm,
            vllm_k=args.vllm_k,
            vllm_one_at_a_time=args.vllm_one_at_a_time,
        )
    if what == "kvcache":
        from bench.bench_kvcache import bench_kvcache

        if not args.data:
            raise ValueError("bench kvcache needs --data FILE (repeatable)")
        fractions = [args.fraction] if args.fraction is not None else []
        fractions += number_list(args.sweep, float, "--sweep") if args.sweep else []
        if any(not 0.0 <= f <= 1.0 for f in fractions):
            raise ValueError("--fraction and --sweep take fractions between 0 and 1")
        if args.engine:
            # Validated again: the engine decides which settings the model may have.
            first = ModelConfig.model_validate({**config.models[0].model_dump(), "engine": args.engine})
            config = config.model_copy(update={"models": [first, *config.models[1:]]})
        return bench_kvcache(
            config,
            args.data,
            args.out,
            limit=args.limit or 50,
            max_tokens=args.max_tokens or 32,
            fraction=args.fraction,
            redis_url=args.redis_url,
            zipf_requests=args.zipf_requests,
            seed=args.seed,
            vllm_prompts=0 if args.no_vllm else args.vllm_prompts,
            sweep=tuple(number_list(args.sweep, float, "--sweep")) if args.sweep else (),
        )
    if what == "engines":
        from bench.bench_engines import ENGINES, bench_engines

        if not args.data:
            raise ValueError("bench engines needs --data FILE (repeatable)")
        engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
        unknown = set(engines) - set(ENGINES)
        if unknown:
            raise ValueError(f"--engines takes {', '.join(ENGINES)}; got {', '.join(sorted(unknown))}")
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        return bench_engines(
            config,
            args.data,
            args.out,
            models=models or ["qwen2.5-coder-0.5b-instruct"],
            engines=engines,
            limit=args.limit or 4,
            max_tokens=args.max_tokens or 64,
            threads=args.threads,
            rss=not args.no_rss,
        )
    if what == "sla":
        from bench.bench_sla import MODES, bench_sla

        if not args.data:
            raise ValueError("bench sla needs --data FILE (repeatable)")
        if args.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}")
        return bench_sla(
            config,
            args.data,
            args.out,
            url=args.url,
            mode=args.mode,
            policy_path=args.policy,
            duration_s=args.duration,
            drain_s=args.drain,
            capacity_s=args.capacity_seconds,
            capacity=args.capacity,
            loads=tuple(number_list(args.loads, float, "--loads")),
            burst=args.burst,
            max_tokens=args.max_tokens or 32,
            seed=args.seed,
            redis_url=args.redis_url,
        )
    if what == "docsqa":
        from bench.bench_docsqa import bench_docsqa

        return bench_docsqa(
            config,
            args.out,
            models=[m.strip() for m in args.models.split(",") if m.strip()] if args.models else None,
            policy=args.qa_policy,
            max_tokens=args.max_tokens or 96,
            limit=args.limit,
        )
    if what == "followups":
        from bench.bench_followups import MODES, bench_followups

        return bench_followups(
            config,
            args.out,
            model=args.model,
            modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()) if args.modes else MODES,
            policy=args.qa_policy,
            max_tokens=args.max_tokens or 96,
            limit=args.limit,
        )
    if what == "retrieval":
        from bench.bench_retrieval import bench_retrieval

        if not args.data:
            raise ValueError("bench retrieval needs --data FILE (repeatable)")
        return bench_retrieval(
            config,
            args.data,
            args.out,
            limit=args.limit,
            downstream_limit=args.downstream_limit,
            model=args.model,
            max_tokens=args.max_tokens or 32,
            seed=args.seed,
        )
    if what == "injection":
        from bench.bench_injection import bench_injection

        models = [m.strip() for m in args.models.split(",")] if args.models else ["qwen2.5-coder-0.5b-instruct"]
        return bench_injection(config, args.out, models=models, data=args.data or [], limit=args.limit or 20)
    if what == "cache":
        from bench.bench_cache import bench_cache

        return bench_cache(
            config,
            args.out,
            model=args.model or "smollm2-135m-instruct",
            wrong_cost=args.wrong_cost,
            per_kind=args.limit or 30,
            max_tokens=args.max_tokens or 16,
            seed=args.seed,
        )
    if what == "ingest":
        from bench.bench_ingest import bench_ingest

        return bench_ingest(config, args.out, files=args.files, limit=args.limit)
    if what == "tenancy":
        from bench.bench_tenancy import bench_tenancy

        sizes = tuple(number_list(args.sizes, int, "--sizes")) if args.sizes else (10_000, 100_000)
        return bench_tenancy(args.out, sizes=sizes, tenants=args.tenants, queries=args.queries)
    if what == "chaos":
        from bench.bench_chaos import SCENARIOS, bench_chaos
        from bench.chaos.scenarios import Settings

        only = tuple(s.strip() for s in args.scenarios.split(",")) if args.scenarios else SCENARIOS
        if set(only) - set(SCENARIOS):
            named = ", ".join(sorted(set(only) - set(SCENARIOS)))
            raise ValueError(f"unknown chaos scenarios {named}; valid: {', '.join(SCENARIOS)}")
        settings = Settings(fault_s=args.fault_seconds, writer_kills=args.writer_kills)
        base = {"ray": {"temp_dir": config.ray.temp_dir}, "cache_dir": config.cache_dir}
        return bench_chaos(args.out, base, settings, only)
    if what == "scale":
        from bench.bench_scale import bench_scale

        return bench_scale(args.out, docs=args.docs, rounds=args.rounds, load_s=args.load_seconds, clients=args.clients)
    raise ValueError(f"unknown benchmark {what!r}")


def number_list(text: str, kind: type[int] | type[float], flag: str) -> list[Any]:
    """A comma-separated option (``--k 2,4,6``, ``--thresholds 0.1,0.3``) as numbers."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"{flag} must be comma-separated numbers: {exc}") from exc


def bench_router(config: AppConfig, data: list[str], out: str | Path, *, repeats: int = 200) -> str:
    """The router's decision time beyond the shared query embedding, per question (median of repeats)."""
    import numpy as np

    from retrieval.embedder import Embedder
    from router.routing import ConfigRouter

    router = ConfigRouter(config, embedding_dim=384)
    if router.classifier is None:
        raise ValueError(f"no classifier to measure: {router.classifier_error}")
    questions = [r["question"] for path in data for r in read_rows(path)] or [
        "Which engine is the embedded default?",
        "Were Scott Derrickson and Ed Wood of the same nationality?",
    ]
    embedder = Embedder(config.embedder.path, device=config.embedder.device)
    embed_times, decide_times = [], []
    vectors = []
    for q in questions:
        start = time.perf_counter()
        vectors.append(embedder.encode([q])[0])
        embed_times.append(time.perf_counter() - start)
    for _ in range(3):  # warm up numpy
        router.classify(questions[0], vectors[0])
    for q, v in zip(questions, vectors, strict=True):
        runs = []
        for _ in range(max(1, repeats // 10)):
            start = time.perf_counter()
            router.route(q, policy="adaptive", embedding=v)
            runs.append(time.perf_counter() - start)
        decide_times.append(statistics.median(runs))
    result: dict[str, Any] = {
        "questions": len(questions),
        "classifier": router.classifier.header.get("version"),
        "decision_ms": {
            "p50": round(percentile(decide_times, 0.5) * 1000, 4),
            "p95": round(percentile(decide_times, 0.95) * 1000, 4),
            "max": round(max(decide_times) * 1000, 4),
        },
        "query_embedding_ms": {
            "p50": round(percentile(embed_times, 0.5) * 1000, 3),
            "p95": round(percentile(embed_times, 0.95) * 1000, 3),
        },
        "class_counts": _classes(router, questions, vectors),
        "hops": _hop_accuracy(config, router, data, dict(zip(questions, vectors, strict=False)), embedder),
        "machine": {"cpus": os.cpu_count() or 0, "python": platform.python_version(), "numpy": np.__version__},
        "target": "decision p50 under 2 ms beyond the shared embedding; one- vs multi-hop balanced accuracy >= 0.70",
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "router.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = (
        "| what | p50 ms | p95 ms |\n| --- | --- | --- |\n"
        f"| router decision (classify + plan) | {result['decision_ms']['p50']} | {result['decision_ms']['p95']} |\n"
        f"| query embedding (shared with retrieval) | {result['query_embedding_ms']['p50']} | "
        f"{result['query_embedding_ms']['p95']} |\n"
    )
    hops = result["hops"]
    if hops["questions"]:
        table += (
            "\n| one- vs multi-hop (held-out halves) | questions | balanced accuracy | accuracy | majority |\n"
            "| --- | --- | --- | --- | --- |\n"
            f"| class C = multi-hop | {hops['questions']} | {hops['balanced_accuracy']} | {hops['accuracy']} | "
            f"{hops['majority_baseline']} |\n"
        )
        for name, f in hops["files"].items():
            table += f"| {name} ({f['hops']}-hop) | {f['questions']} | recall {f['recall']} | | |\n"
    (out_dir / "router.md").write_text(table, encoding="utf-8")
    return table


def _hop_accuracy(
    config: AppConfig, router: ConfigRouter, data: list[str], vectors: dict[str, Any], embedder: Any
) -> dict[str, Any]:
    """The classifier against the datasets' own one- vs multi-hop labels (class C predicts multi-hop),
    on the held-out half of each file (the split the training used), less any question the classifier
    was trained on (``labels.jsonl`` beside the artifact): balanced accuracy is the mean of the two
    recalls, so a constant guess scores 0.5."""
    import numpy as np

    from router.labels import split_rows
    from router.training import balanced_accuracy

    assert router.classifier is not None, "scoring hops needs the classifier"
    metrics = router.classifier.header.get("metrics", {})
    seed, fraction = int(metrics.get("seed", 0)), float(metrics.get("train_fraction", 0.5))
    seen: set[str] = set()
    labels_path = Path(config.router.artifact or "").with_name("labels.jsonl")
    if labels_path.is_file():
        seen = {json.loads(line)["question"] for line in labels_path.read_text(encoding="utf-8").splitlines() if line}
    truth, pred, files, excluded = [], [], {}, 0
    for path in data:
        _, test = split_rows(read_rows(path), seed, fraction)
        kept = [r for r in test if r["question"] not in seen]
        excluded += len(test) - len(kept)
        if not kept:
            continue
        multi = [(r.get("hops") or 1) >= 2 for r in kept]
        guessed = []
        for r in kept:
            v = vectors.get(r["question"])
            v = embedder.encode([r["question"]])[0] if v is None else v
            guessed.append(router.classify(r["question"], v).cls == "C")
        truth += multi
        pred += guessed
        hop = 2 if all(multi) else 1 if not any(multi) else "mixed"
        right = [g == t for g, t in zip(guessed, multi, strict=True)]
        files[Path(path).name] = {"questions": len(kept), "hops": hop, "recall": round(sum(right) / len(right), 4)}
    t, p = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    return {
        "questions": len(truth),
        "excluded_seen_in_training": excluded,
        "split": {"seed": seed, "train_fraction": fraction, "half": "test"},
        "balanced_accuracy": round(balanced_accuracy(t, p), 4) if len(t) else None,
        "accuracy": round(float((t == p).mean()), 4) if len(t) else None,
        "majority_baseline": round(float(max(t.mean(), 1 - t.mean())), 4) if len(t) else None,
        "files": files,
    }


def _classes(router: ConfigRouter, questions: list[str], vectors: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q, v in zip(questions, vectors, strict=True):
        label = str(router.classify(q, v).cls)
        counts[label] = counts.get(label, 0) + 1
    return counts
