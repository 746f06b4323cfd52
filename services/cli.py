"""`ragyard`: serve, ingest, ask, eval."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from retrieval.errors import RetrievalError
from services.config import load_config
from services.errors import ConfigError, RagyardError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def cmd_serve(args: argparse.Namespace) -> int:
    from services.deployments import local as serving

    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        config = config.model_copy(update={"server": config.server.model_copy(update=overrides)})
    url = f"http://{config.server.host}:{config.server.port}"
    print(
        f"Ragyard: starting Ray Serve on {url} (Ray temp dir {Path(config.ray.temp_dir).resolve()}); "
        "the first start converts the model, about 30 s",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serving.start(config)
        # An operator key in clear (not a digest) lets the banner read the readiness details.
        key = next((k for k in config.server.api_keys if not k.startswith("sha256:")), None)
        ready = serving.wait_ready(url, 10, api_key=key)
        models = ", ".join(ready.get("workers", {}))
        docs = ready.get("retriever", {}).get("documents", "?")
        print(
            f"Ragyard: ready at {url}  (OpenAI base URL {url}/v1; model auto -> {models}; "
            f"{docs} documents indexed). Ctrl-C stops it.",
            flush=True,
        )
        stop.wait()
    finally:
        print("Ragyard: stopping", flush=True)
        serving.stop()
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Put every model the config needs in place (the container image runs this at build time);
    ``--model NAME`` converts only those packaged models."""
    from retrieval.embedder import embedder_dir
    from services.workers.model_store import ensure_packaged, resolve_gguf, resolve_model_path

    config = load_config(args.config)
    if args.model:
        for name in args.model:
            print(f"model {name}: {ensure_packaged(name, config.cache_dir)}", flush=True)
        return 0
    for model in config.models:
        # llama.cpp reads the GGUF as it is (joined and checked once); the other engines a converted HF folder.
        where = (
            resolve_gguf(model.path, config.cache_dir)
            if model.engine == "llamacpp"
            else resolve_model_path(model.path, config.cache_dir)
        )
        print(f"model {model.id}: {where}", flush=True)
        spec = model.speculative
        if spec is not None and spec.method in ("draft_model", "hybrid"):
            print(f"  draft: {resolve_model_path(spec.model, config.cache_dir)}", flush=True)
    embedder = Path(config.embedder.path).expanduser() if config.embedder.path else embedder_dir()
    if not (embedder / "config.json").exists():
        raise ConfigError(f"embedder {embedder} is not a sentence-transformers folder (no config.json)")
    print(f"embedder: {embedder}", flush=True)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from retrieval.ingest import load_path

    docs = [d for p in args.paths for d in load_path(p)]
    if args.url:
        import httpx

        payload = {"documents": [{"id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata} for d in docs]}
        key = args.api_key or os.environ.get("RAGYARD_API_KEY")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        resp = httpx.post(f"{args.url.rstrip('/')}/v1/documents", json=payload, headers=headers, timeout=600)
        print(json.dumps(resp.json(), indent=2))
        return 0 if resp.status_code == 200 else 1
    from services.deployments.retriever import RetrieverService

    config = load_config(args.config)
    config = config.model_copy(update={"corpus": config.corpus.model_copy(update={"ingest_on_start": False})})
    service = RetrieverService(config)
    report = service.retriever.ingest(docs)
    print(json.dumps({**report.as_dict(), **service.retriever.stats()}, indent=2))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from retrieval.policies.base import Question
    from services.rag import AnswerRequest, build_local

    config = load_config(args.config)
    service = build_local(config)
    record = asyncio.run(
        service.answer(
            AnswerRequest(
                question=Question(text=args.question, style=args.style),
                policy=args.policy,
                top_k=args.top_k,
                max_tokens=args.max_tokens,
            )
        )
    )
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(record["answer"])
    for n, c in enumerate(record["citations"], start=1):
        print(f"  [{n}] {c['title']} (document {c['document_id']}, chunk {c['chunk']}, score {c['score']})")
    t = record["timings"]
    print(
        f"  plan: {record['plan']['policy']} on {record['plan']['model']}; retrieve {t['retrieve_s']:.2f}s, "
        f"prefill {t['prefill_s']:.2f}s, decode {t['decode_s']:.2f}s, total {t['total_s']:.2f}s"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from services.evaluation.harness import Evaluator, write_outputs

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
    from services.evaluation.ladder import POLICIES, collect_ladder

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
    from services.evaluation.datasets import DATASETS, build

    if args.action == "list":
        for d in DATASETS.values():
            print(f"{d.name}\t{d.requirement}\t{d.licence}\thops={d.hops}\t{d.file}")
        return 0
    out = args.out or str(Path(load_config(args.config).cache_dir).expanduser() / "data")
    print(json.dumps(build(args.name or list(DATASETS), out), indent=2))
    return 0


def cmd_build_quality(args: argparse.Namespace) -> int:
    from router.quality import QualityTable, build_table
    from services.evaluation.ladder import read_runs

    content = build_table(list(read_runs(Path(args.runs)).values()), version=args.version)
    QualityTable.from_content(content).save(args.out)
    print(json.dumps({k: content[k] for k in ("models", "table", "label_counts", "questions")}, indent=2))
    return 0


def cmd_build_priors(args: argparse.Namespace) -> int:
    from router.priors import LatencyPriors, build_priors
    from services.evaluation.harness import read_rows

    rows = [row for path in args.predictions for row in read_rows(path)]
    content = build_priors(rows, source=", ".join(args.predictions))
    if not content["priors"]:
        print("no fixed (model, policy) answers in these files", file=sys.stderr)
        return 2
    LatencyPriors.from_content(content).save(args.out)
    print(json.dumps(content["priors"], indent=2))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from services.evaluation.plans import write_plans

    config = load_config(args.config)
    summary = write_plans(config, args.data, args.out, policy=args.policy, model=args.model, limit=args.limit)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train_router(args: argparse.Namespace) -> int:
    from services.evaluation.train_router import train_from_runs, train_router

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
    from services.evaluation.bench import number_list
    from services.evaluation.calibrate import calibrate_dragin

    config = load_config(args.config)
    thresholds = number_list(args.thresholds, float, "--thresholds")
    table = calibrate_dragin(
        config, args.data, args.out, thresholds, seed=args.seed, limit=args.limit, max_tokens=args.max_tokens
    )
    print(table)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from services.evaluation.bench import run_bench

    config = load_config(args.config)
    result = run_bench(args.what, config, args)
    print(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragyard", description="Adaptive RAG question answering.")
    parser.add_argument("--config", help="YAML config file (default: $RAGYARD_CONFIG or built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the app through Ray Serve (local Ray unless ray.address)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; HOST)")
    p.add_argument("--port", type=int, help="port (default 8000; PORT)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("prepare", help="convert and check every model the config needs, then exit")
    p.add_argument("--model", action="append", help="only this packaged model (catalog name; repeatable)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("ingest", help="index text, markdown or JSONL files or folders")
    p.add_argument("paths", nargs="+")
    p.add_argument("--url", help="send to a running server (e.g. http://127.0.0.1:8000) instead")
    p.add_argument(
        "--api-key",
        help="with --url: the key to send (default $RAGYARD_API_KEY); an operator's writes the shared namespace, "
        "a tenant's its own",
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("ask", help="answer one question in this process (no Ray)")
    p.add_argument("question")
    p.add_argument("--policy", help="retrieval policy (default: config)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--style", choices=["chat", "short"], default="chat")
    p.add_argument("--json", action="store_true", help="print the whole record")
    p.set_defaults(func=cmd_ask)

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
            "tenancy",
            "chaos",
            "scale",
        ],
    )
    p.add_argument("--data", action="append", help="QA JSONL file (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=200, help="router: timing repeats")
    p.add_argument("--seed", type=int, default=0, help="policies: seed of the train/test split")
    p.add_argument("--limit", type=int, help="policies, spec: first N test questions of each file only (spec: 8)")
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
    p.add_argument("--policy", help="sla: SLA policy file (default: services/evaluation/sla_bench.yaml)")
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
    p.add_argument("--model", help="retrieval: model id for the downstream answers (default: the config's first)")
    p.add_argument(
        "--models",
        help="docsqa, policies: comma-separated model ids (default: every configured model); engines: catalog names "
        "(default: qwen2.5-coder-0.5b-instruct)",
    )
    p.add_argument("--policies", help="policies: comma-separated subset of none,single,multi,dragin,adaptive")
    p.add_argument("--qa-policy", default="single", help="docsqa: retrieval policy the answers use")
    p.add_argument("--sizes", help="tenancy: corpus sizes in chunks, comma-separated (default 10000,100000)")
    p.add_argument("--tenants", type=int, default=20, help="tenancy: tenants sharing the corpus")
    p.add_argument("--queries", type=int, default=200, help="tenancy: queries per size")
    p.add_argument("--fault-seconds", type=float, default=10.0, help="chaos: how long each Redis fault lasts")
    p.add_argument("--writer-kills", type=int, default=200, help="chaos: kill -9 of the store writer subprocess")
    p.add_argument("--scenarios", help="chaos: comma-separated subset (default: all; see bench_chaos.SCENARIOS)")
    p.add_argument("--docs", type=int, default=20, help="scale: documents written for ingest-to-visible")
    p.add_argument("--rounds", type=int, default=4, help="scale: rounds over the chunk sets per router")
    p.add_argument("--load-seconds", type=float, default=45.0, help="scale: seconds of each load (throughput, kill)")
    p.add_argument("--clients", type=int, default=3, help="scale: concurrent clients of each load")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s",
    )
    from services.telemetry import RequestIdFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    _quiet_libraries()
    try:
        return int(args.func(args))
    except RagyardError as exc:
        print(f"ragyard: {exc.message}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RetrievalError) as exc:
        print(f"ragyard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
