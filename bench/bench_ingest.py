"""`ragyard bench ingest`: how fast the format readers turn real files into text, whether the text is right, and
how long a large upload takes to be searchable.

The files are the ones the readers' own projects test with, from their source distributions on PyPI (downloaded
once with pip into the cache): pypdf's sample PDFs, python-docx's Word files, and HTML pages from trafilatura's
and html2text's tests. Three parts:

- **Readers**: every file through `retrieval.ingest.parse_file`, three passes; documents/s and MB/s per format
  (medians over the passes), and how many files each reader refused, by reason (encrypted PDFs, PDFs with no
  text layer, empty Word files).
- **Reference checks**: for a few files, phrases the recovered text must hold (and, for a web page, boilerplate it
  must not), written from reading the files.
- **Upload**: ``--files`` files (the readable ones, repeated under new names) sent through the gateway app as one
  multipart upload, which the gateway makes an ingestion job, to a fresh index with the real embedder: the job's
  progress polled every second, and the time until every file is listed and the last one is found by search.
"""

from __future__ import annotations

import collections
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.reports import write_report
from retrieval.errors import DocumentFormatError
from retrieval.ingest import parse_file, type_for_path
from services.config import AppConfig

# (sdist, the members to take, their format). Pinned: the figures are for these files.
SOURCES: tuple[tuple[str, str, str], ...] = (
    ("pypdf==7.1.1", "resources/", ".pdf"),
    ("python-docx==1.2.0", "features/steps/test_files/", ".docx"),
    ("trafilatura==2.3.1", "tests/resources/", ".html"),
    ("html2text==2025.4.15", "test/", ".html"),
)

# (file, phrases its text must hold, phrases it must not): read from the files themselves.
REFERENCES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("pypdf/resources/crazyones.pdf", ("The Crazy Ones\nOctober 14, 1998", "The misfits. The rebels."), ()),
    (
        "pypdf/resources/pdflatex-outline.pdf",
        ("Hello, here is some text without a meaning.", "1 Foo\n"),
        (),
    ),
    ("python-docx/features/steps/test_files/par-known-styles.docx", ("# Heading 1\n\nBody Text",), ()),
    (
        "python-docx/features/steps/test_files/tbl-having-applied-style.docx",
        ("foo to you | and a hearty foo to you too sir!",),
        (),
    ),
    (
        "trafilatura/tests/resources/mozilla.org.firefox.developer.html",
        ("# Welcome to Firefox Developer Edition", "Develop, deploy and debug Firefox OS apps"),
        ("Privacy Policy", "Firefox Developer Edition - Mozilla | Firefox"),
    ),
    (
        "trafilatura/tests/resources/http_sample.html",
        ("# Herman Melville - Moby-Dick", "Availing himself of the mild, summer-cool weather"),
        (),
    ),
)


def corpus(cache_dir: Path) -> dict[str, list[Path]]:
    """The benchmark's files by format, fetched on first use: ``<cache>/ingest-corpus/<package>/<path>``."""
    root = cache_dir / "ingest-corpus"
    found: dict[str, list[Path]] = collections.defaultdict(list)
    for spec, prefix, suffix in SOURCES:
        package = spec.split("==")[0]
        target = root / package
        if not (target / ".complete").exists():
            _fetch(spec, prefix, suffix, target)
        found[suffix.lstrip(".")] += sorted(p for p in target.rglob(f"*{suffix}") if p.is_file())
    return dict(found)


def _fetch(spec: str, prefix: str, suffix: str, target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "--dest", tmp, spec],
            check=True,
        )
        [archive] = list(Path(tmp).glob("*.tar.gz"))
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                inner = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.isfile() and inner.startswith(prefix) and inner.lower().endswith(suffix):
                    data = tar.extractfile(member)
                    if data is not None:
                        dest = target / inner
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(data.read())
    (target / ".complete").write_text(spec + "\n", encoding="utf-8")


def _read_all(files: list[Path], passes: int) -> dict[str, Any]:
    sizes = {f: f.stat().st_size for f in files}
    times: list[float] = []
    refused: collections.Counter[str] = collections.Counter()
    chars = 0
    read = 0
    for n in range(passes):
        start = time.perf_counter()
        for f in files:
            try:
                [doc] = parse_file(f.read_bytes(), type_for_path(f))
            except DocumentFormatError as exc:
                if n == 0:
                    refused[str(exc).split(" (")[0]] += 1
                continue
            if n == 0:
                read += 1
                chars += len(doc.text)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "files": len(files),
        "read": read,
        "refused": dict(refused.most_common()),
        "megabytes": round(sum(sizes.values()) / 1e6, 3),
        "chars": chars,
        "seconds": round(seconds, 4),
        "docs_per_s": round(len(files) / seconds, 1),
        "mb_per_s": round(sum(sizes.values()) / 1e6 / seconds, 2),
    }


def _references(root: Path) -> list[dict[str, Any]]:
    out = []
    for rel, must, must_not in REFERENCES:
        path = root / rel
        [doc] = parse_file(path.read_bytes(), type_for_path(path))
        missing = [p for p in must if p not in doc.text]
        leaked = [p for p in must_not if p in doc.text]
        out.append({"file": rel, "ok": not missing and not leaked, "missing": missing, "leaked": leaked})
    return out


def _upload(config: AppConfig, files: list[Path], n: int) -> dict[str, Any]:
    """``n`` files in one multipart upload through the gateway app into a fresh index: the job's progress over
    time, and the time until every file is listed and the last is found by search."""
    from fastapi.testclient import TestClient

    from services.deployments.retriever import RetrieverService
    from services.http.app import create_app_for
    from services.pipeline import RagService
    from services.pipeline.clients import local_retriever

    readable = []
    for f in files:
        try:
            parse_file(f.read_bytes(), type_for_path(f))
            readable.append(f)
        except DocumentFormatError:
            continue
    names = [
        (f"copy-{i // len(readable):03d}/{readable[i % len(readable)].name}", readable[i % len(readable)])
        for i in range(n)
    ]
    parts = [("file", (name, path.read_bytes(), "application/octet-stream")) for name, path in names]
    size = sum(len(p[1][1]) for p in parts)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.model_copy(
            update={
                "index": config.index.model_copy(update={"dir": str(Path(tmp) / "index")}),
                "corpus": config.corpus.model_copy(update={"ingest_on_start": False}),
                "server": config.server.model_copy(
                    update={"allowed_hosts": ["testserver"], "api_keys": [], "max_upload_bytes": size + (1 << 20)}
                ),
            }
        )
        retriever = local_retriever(RetrieverService(cfg))
        svc = RagService(cfg, retriever, {}, cache=None)
        progress: list[dict[str, Any]] = []
        with TestClient(create_app_for(svc)) as client:
            start = time.perf_counter()
            resp = client.post("/v1/documents", files=parts, headers={"prefer": "respond-async"})
            resp.raise_for_status()
            answered_s = time.perf_counter() - start
            location = resp.headers["location"]
            while True:
                job = client.get(location).json()
                progress.append(
                    {
                        "s": round(time.perf_counter() - start, 2),
                        "stage": job["stage"],
                        "read": job["read"],
                        "indexed": job["indexed"],
                        "chunks": job["chunks"],
                    }
                )
                if job["status"] not in ("queued", "running"):
                    break
                time.sleep(1.0)
            listed = 0
            after = None
            while True:
                page = client.get("/v1/documents", params={"limit": 1000, **({"after": after} if after else {})}).json()
                listed += len(page["data"])
                if not page["has_more"]:
                    break
                after = page["last_id"]
            last_name, last_path = names[-1]
            [last] = parse_file(last_path.read_bytes(), type_for_path(last_path))
            hits = client.post(
                "/v1/vector_stores/shared/search", json={"query": last.text[:200], "max_num_results": 50}
            )
            found = hits.status_code == 200 and any(h["file_id"] == f"file:{last_name}" for h in hits.json()["data"])
            searchable_s = time.perf_counter() - start
    read_s = next((p["s"] for p in progress if p["stage"] in ("indexing", "done")), None)
    return {
        "files": n,
        "distinct_files": len(readable),
        "megabytes": round(size / 1e6, 1),
        "status": job["status"],
        "answered_s": round(answered_s, 3),
        "all_read_by_s": read_s,
        "listed": listed,
        "chunks": job["chunks"],
        "last_file_found_by_search": found,
        "seconds_to_searchable": round(searchable_s, 2),
        "files_per_s": round(n / searchable_s, 1),
        "progress": progress,
    }


def bench_ingest(
    config: AppConfig, out: str | Path, *, passes: int = 3, files: int = 1000, limit: int | None = None
) -> str:
    root = Path(config.cache_dir).expanduser()
    by_format = corpus(root)
    if limit:
        by_format = {k: v[:limit] for k, v in by_format.items()}
    readers = {fmt: _read_all(paths, passes) for fmt, paths in sorted(by_format.items())}
    refs = _references(root / "ingest-corpus")
    every = [p for paths in by_format.values() for p in paths]
    upload = _upload(config, every, files) if files else {}
    results = {"readers": readers, "references": refs, "upload": upload}
    goals = {
        "references_ok": f"{sum(r['ok'] for r in refs)}/{len(refs)}",
        "upload_job_succeeded": bool(upload) and upload["status"] == "succeeded",
        "upload_all_listed": bool(upload) and upload["listed"] == files,
        "upload_last_found": bool(upload) and upload["last_file_found_by_search"],
    }
    settings = {"passes": passes, "files": files, "limit": limit, "sources": [s[0] for s in SOURCES]}
    return write_report(out, "ingest", goals, results, settings, _markdown)


def _markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        "Ingest: the format readers on their projects' own test files (medians of three passes)",
        "",
        "| format | files | read | refused (why) | MB | docs/s | MB/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fmt, row in r["readers"].items():
        why = "; ".join(f"{k}: {v}" for k, v in row["refused"].items()) or "-"
        lines.append(
            f"| {fmt} | {row['files']} | {row['read']} | {why} | {row['megabytes']} | {row['docs_per_s']} | "
            f"{row['mb_per_s']} |"
        )
    lines += ["", "| reference file | ok | missing | leaked |", "| --- | --- | --- | --- |"]
    for ref in r["references"]:
        lines.append(f"| {ref['file']} | {ref['ok']} | {ref['missing'] or '-'} | {ref['leaked'] or '-'} |")
    up = r["upload"]
    if up:
        lines += [
            "",
            f"Upload of {up['files']} files ({up['distinct_files']} distinct, {up['megabytes']} MB) as one job: "
            f"answered (202) in {up['answered_s']} s, every file read by {up['all_read_by_s']} s, {up['chunks']} "
            f"chunks; the job {up['status']}, every file listed ({up['listed']}) and the last found by search "
            f"({up['last_file_found_by_search']}) {up['seconds_to_searchable']} s after the request "
            f"({up['files_per_s']} files/s).",
            "",
            "| s | stage | files read | documents indexed | chunks |",
            "| --- | --- | --- | --- | --- |",
        ]
        rows = up["progress"][:: max(1, len(up["progress"]) // 10)]
        if rows[-1] is not up["progress"][-1]:
            rows.append(up["progress"][-1])
        for p in rows:
            lines.append(f"| {p['s']} | {p['stage']} | {p['read']} | {p['indexed']} | {p['chunks']} |")
    return "\n".join(lines) + "\n"
