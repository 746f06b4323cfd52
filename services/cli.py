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
from importlib.metadata import entry_points
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
    from services.serve import local as serving

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


# A `ragyard ingest --url` upload: files and bytes per multipart request (the server's defaults answer such a
# request at once, `corpus.async_files` and `corpus.async_bytes`; one it answers with a job is waited for).
UPLOAD_FILES = 20
UPLOAD_BYTES = 8 << 20


def _upload_batches(files: list[tuple[Path, str]]) -> list[list[tuple[Path, str]]]:
    batches: list[list[tuple[Path, str]]] = [[]]
    size = 0
    for file, name in files:
        n = file.stat().st_size
        if batches[-1] and (len(batches[-1]) >= UPLOAD_FILES or size + n > UPLOAD_BYTES):
            batches.append([])
            size = 0
        batches[-1].append((file, name))
        size += n
    return [b for b in batches if b]


def _wait_for_job(url: str, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """Poll an ingestion job until it has finished; its last record."""
    import time

    import httpx

    while True:
        job: dict[str, Any] = httpx.get(
            f"{url.rstrip('/')}/v1/documents/jobs/{job_id}", headers=headers, timeout=60
        ).json()
        if job.get("status") not in ("queued", "running"):
            return job
        time.sleep(0.5)


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from retrieval.ingest import files_under, load_file

    files = [f for p in args.paths for f in files_under(p)]
    # The bar goes to stderr and only to a terminal: the JSON report on stdout stays clean for scripts.
    quiet = not sys.stderr.isatty()
    if args.url:
        import httpx

        key = args.api_key or os.environ.get("RAGYARD_API_KEY")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        totals: dict[str, Any] = {}
        with tqdm(total=len(files), unit="file", desc="uploading", disable=quiet) as bar:
            # Each batch is one multipart request, written all or nothing; the server reads the files (a PDF's
            # pages travel with it).
            for batch in _upload_batches(files):
                parts = [("file", (name, file.read_bytes(), "application/octet-stream")) for file, name in batch]
                resp = httpx.post(f"{args.url.rstrip('/')}/v1/documents", files=parts, headers=headers, timeout=600)
                result = resp.json()
                ok = resp.status_code == 200
                if resp.status_code == 202:  # the server made it a job: its record, once finished
                    job = _wait_for_job(args.url, result["id"], headers)
                    ok = job.get("status") == "succeeded"
                    keep = ("namespace", "added", "updated", "unchanged", "chunks", "generation")
                    result = {k: job.get(k) for k in keep} if ok else job
                if not ok:
                    print(json.dumps(result, indent=2))
                    return 1
                for k, v in result.items():
                    totals[k] = totals.get(k, []) + v if isinstance(v, list) else v
                bar.update(len(batch))
        print(json.dumps(totals, indent=2))
        return 0
    from services.deployments.retriever import RetrieverService

    docs = []
    for file, name in tqdm(files, unit="file", desc="reading", disable=quiet):
        docs += load_file(file, name)
    config = load_config(args.config)
    config = config.model_copy(update={"corpus": config.corpus.model_copy(update={"ingest_on_start": False})})
    service = RetrieverService(config)
    report = service.retriever.ingest(docs)
    print(json.dumps({**report.as_dict(), **service.retriever.stats()}, indent=2))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from retrieval.policies.base import Question
    from services.pipeline.records import AnswerRequest
    from services.pipeline.service import build_local

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
        print(json.dumps(record.wire(), indent=2))
        return 0
    print(record.answer)
    for n, c in enumerate(record.citations, start=1):
        print(f"  [{n}] {c.title} (document {c.document_id}, chunk {c.chunk}, score {c.score})")
    t = record.timings
    print(
        f"  plan: {record.plan.policy} on {record.plan.model}; retrieve {t['retrieve_s']:.2f}s, "
        f"prefill {t['prefill_s']:.2f}s, decode {t['decode_s']:.2f}s, total {t['total_s']:.2f}s"
    )
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from core.config import settings_table
    from services.config import AppConfig

    print(settings_table(AppConfig, title="Settings", intro=SETTINGS_INTRO), end="")
    return 0


SETTINGS_INTRO = (
    "Every setting of Ragyard's app config, written by `ragyard settings > services/settings.md` from the config "
    "models themselves (a test holds this page to them). Set them in a YAML file (`ragyard --config FILE`, "
    "`RAGYARD_CONFIG`; `services/ragyard.yaml` is a commented start) or in the environment: "
    "`RAGYARD_<SECTION>__<FIELD>` (`RAGYARD_SERVER__PORT=8080`), and the short `HOST`, `PORT` and `REDIS_URL`. "
    "Paths are shown from the repository (`<repo>`) and the home directory (`~`)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragyard", description="Adaptive RAG question answering.")
    parser.add_argument("--config", help="YAML config file (default: $RAGYARD_CONFIG or built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the app through Ray Serve (local Ray unless ray.address)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; HOST)")
    p.add_argument("--port", type=int, help="port (default 8000; PORT)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("settings", help="print every config setting with its default and description (markdown)")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("prepare", help="convert and check every model the config needs, then exit")
    p.add_argument("--model", action="append", help="only this packaged model (catalog name; repeatable)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("ingest", help="index files or folders: text, markdown, JSONL, PDF, Word (.docx), HTML")
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

    # Further command groups register themselves (entry points "ragyard.commands"): the benchmarks and the
    # evaluation tools live in `bench/`, above the serving code, which never imports them.
    # An install without them (the container image ships the serving code only) has the commands above.
    for entry in entry_points(group="ragyard.commands"):
        try:
            register = entry.load()
        except ModuleNotFoundError:
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s",
    )
    from services.pipeline.telemetry import RequestIdFilter

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
