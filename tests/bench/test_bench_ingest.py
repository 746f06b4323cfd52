"""`ragyard bench ingest` at its smallest, on the readers' test files laid out as its download would lay them out
(so no network): every part runs, the reference checks hold, and the upload is listed and searchable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.bench_ingest import REFERENCES, SOURCES, bench_ingest, corpus
from services.config import load_config

pytestmark = [pytest.mark.integration, pytest.mark.model]  # the real embedder

FILES = Path(__file__).parents[1] / "retrieval" / "files"


def _cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    for rel, _, _ in REFERENCES:
        dest = root / "ingest-corpus" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FILES / Path(rel).name, dest)
    shutil.copy(FILES / "encrypted-file.pdf", root / "ingest-corpus" / "pypdf" / "resources" / "encrypted-file.pdf")
    for spec, _, _ in SOURCES:
        folder = root / "ingest-corpus" / spec.split("==")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".complete").write_text(spec, encoding="utf-8")
    return root


def test_bench_ingest_reads_checks_and_uploads(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    assert {k: len(v) for k, v in corpus(cache).items()} == {"pdf": 3, "docx": 2, "html": 2}
    config = load_config({"cache_dir": str(cache), "index": {"dir": str(tmp_path / "unused")}})
    table = bench_ingest(config, tmp_path / "out", passes=1, files=9)
    report = json.loads((tmp_path / "out" / "ingest.json").read_text())
    readers = report["results"]["readers"]
    assert readers["pdf"]["read"] == 2 and readers["pdf"]["refused"] == {
        "the PDF is encrypted; send it without a password": 1
    }
    assert readers["docx"]["read"] == 2 and readers["html"]["read"] == 2
    assert all(r["ok"] for r in report["results"]["references"]), report["results"]["references"]
    upload = report["results"]["upload"]
    assert upload["files"] == upload["listed"] == 9 and upload["distinct_files"] == 6
    assert upload["last_file_found_by_search"] and upload["status"] == "succeeded"
    assert upload["progress"][-1]["indexed"] == 9 and upload["progress"][-1]["stage"] == "done"
    assert report["goals"] == {
        "references_ok": "6/6",
        "upload_job_succeeded": True,
        "upload_all_listed": True,
        "upload_last_found": True,
    }
    assert "| pdf | 3 | 2 | the PDF is encrypted" in table
