"""Files as people have them at the documents API: a PDF, a Word file or a web page sent as itself, or several
files as a multipart form (OpenAI's files API's shape); answers cite a PDF's page; a file that cannot be read
refuses its whole upload with its name and the reason, and nothing of the batch is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retrieval.retriever import Retriever
from services.config import load_config
from services.deployments.retriever import RetrieverService
from services.deployments.worker import Worker
from services.http.app import create_app_for
from services.pipeline import RagService
from services.pipeline.clients import local_retriever, local_worker
from tests.fakes import ScriptedEngine

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

MODEL = "smollm2-135m-instruct"
FILES = Path(__file__).parents[2] / "retrieval" / "files"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture()
def client(hashing_embedder: Any, tmp_path: Path) -> Iterator[TestClient]:
    config = load_config(
        {
            "models": [{"id": MODEL}],
            "index": {"dir": str(tmp_path / "index")},
            "corpus": {"ingest_on_start": False},
            "cache": {"response_cache_url": "memory://"},
            # A small body limit for every route, a larger one for uploads.
            "server": {"max_body_bytes": 4096, "max_upload_bytes": 64 << 10, "allowed_hosts": ["testserver"]},
        }
    )
    retriever = local_retriever(
        RetrieverService(config, retriever=Retriever.create(index_dir=config.index.dir, embedder=hashing_embedder))
    )
    engine = ScriptedEngine("It is about Foo.")
    svc = RagService(config, retriever, {MODEL: local_worker(Worker(config, MODEL, engine=engine))}, cache=None)
    with TestClient(create_app_for(svc), raise_server_exceptions=False) as c:
        yield c


def _file(name: str) -> bytes:
    return (FILES / name).read_bytes()


def _ids(client: TestClient) -> list[str]:
    return [d["id"] for d in client.get("/v1/documents").json()["data"]]


def test_a_pdf_sent_as_itself_is_cited_by_page(client: TestClient) -> None:
    resp = client.post("/v1/documents?id=outline", content=_file("pdflatex-outline.pdf"), headers={"content-type": PDF})
    assert resp.status_code == 200, resp.text
    assert resp.json()["added"] == ["outline"]
    doc = client.get("/v1/documents/outline").json()
    assert doc["metadata"] == {"pages": 4} and doc["chunks"] >= 4
    rec = client.post("/v1/qa", json={"question": "What does section Baz say?", "top_k": 4, "max_tokens": 8}).json()
    pages = [c["page"] for c in rec["citations"]]
    assert pages and all(isinstance(p, int) and 1 <= p <= 4 for p in pages)


def test_a_multipart_upload_takes_each_file_by_its_type(client: TestClient) -> None:
    files = [
        ("file", ("crazyones.pdf", _file("crazyones.pdf"), PDF)),
        ("file", ("styles.docx", _file("par-known-styles.docx"), "application/octet-stream")),  # by its name
        ("file", ("firefox.html", _file("mozilla.org.firefox.developer.html"), "text/html")),
        ("file", ("notes.md", b"# Notes\n\nPlain notes.", "text/markdown")),
    ]
    resp = client.post("/v1/documents", files=files)
    assert resp.status_code == 200, resp.text
    assert sorted(resp.json()["added"]) == [
        "file:crazyones.pdf",
        "file:firefox.html",
        "file:notes.md",
        "file:styles.docx",
    ]
    titles = {d["id"]: d["title"] for d in client.get("/v1/documents").json()["data"]}
    assert titles["file:firefox.html"] == "Welcome to Firefox Developer Edition"
    assert titles["file:crazyones.pdf"] == "crazyones"
    # The same file again is recognised; an edited one replaces its old version.
    again = client.post("/v1/documents", files=[("file", ("notes.md", b"# Notes\n\nEdited notes.", "text/markdown"))])
    assert again.json()["updated"] == ["file:notes.md"]


@pytest.mark.parametrize(
    ("name", "raw", "media", "reason"),
    [
        ("locked.pdf", "encrypted-file.pdf", PDF, "the PDF is encrypted"),
        ("scan.pdf", "imagemagick-lzw.pdf", PDF, "no text layer"),
        ("cut.docx", "par-known-styles.docx", DOCX, "not a .docx"),
        ("scripts.html", None, "text/html", "has no text"),
        ("old.doc", None, "application/msword", "unsupported"),
    ],
)
def test_a_file_that_cannot_be_read_refuses_the_whole_upload(
    client: TestClient, name: str, raw: str | None, media: str, reason: str
) -> None:
    body = _file(raw) if raw else b"<html><body><script>steal()</script></body></html>"
    if name == "cut.docx":
        body = body[: len(body) // 2]
    files = [("file", ("crazyones.pdf", _file("crazyones.pdf"), PDF)), ("file", (name, body, media))]
    resp = client.post("/v1/documents", files=files)
    assert resp.status_code in (400, 415), resp.text
    error = resp.json()["error"]
    assert error["message"].startswith(f"{name}: ") and reason in error["message"]
    assert _ids(client) == []  # the good file beside it was not written either


def test_upload_limits_and_refusals_at_the_edge(client: TestClient) -> None:
    pdf = _file("pdflatex-outline.pdf")  # 48 KB: over the 4 KB body limit, under the 64 KB upload limit
    assert client.post("/v1/documents", content=pdf, headers={"content-type": PDF}).status_code == 200
    big = client.post("/v1/documents", content=pdf + b" " * (20 << 10), headers={"content-type": PDF})
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"
    # Every other route keeps the small limit.
    chat = client.post("/v1/qa", json={"question": "x" * 5000})
    assert chat.status_code == 413
    # A PDF is bytes: JSON cannot carry it.
    json_pdf = client.post("/v1/documents", json={"documents": [{"text": "%PDF-1.4", "type": "pdf"}]})
    assert json_pdf.status_code == 400 and "send it as its own content type" in json_pdf.json()["error"]["message"]
    no_file = client.post("/v1/documents", files={"purpose": (None, "assistants")})  # a form field, no file
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    broken = client.post(
        "/v1/documents", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert broken.status_code == 400, broken.text


def test_ragyard_ingest_url_uploads_a_folder_in_batches(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import httpx

    from services import cli

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "outline.pdf").write_bytes(_file("pdflatex-outline.pdf"))
    (folder / "styles.docx").write_bytes(_file("par-known-styles.docx"))
    (folder / "page.html").write_bytes(_file("mozilla.org.firefox.developer.html"))
    (folder / "a.md").write_text("# A\n\nAlpha.", encoding="utf-8")
    sent: list[int] = []

    def post(url: str, **kwargs: Any) -> httpx.Response:
        assert url == "http://rag.test/v1/documents"
        sent.append(len(kwargs["files"]))
        return client.post("/v1/documents", files=kwargs["files"], headers=kwargs["headers"])

    monkeypatch.setattr(httpx, "post", post)
    monkeypatch.setattr(cli, "UPLOAD_FILES", 3)
    assert cli.main(["ingest", str(folder), "--url", "http://rag.test"]) == 0
    assert sent == [3, 1]
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["added"]) == ["file:a.md", "file:page.html", "file:styles.docx", "file:sub/outline.pdf"]
    # The server read the PDF itself: its pages came with it.
    assert client.get("/v1/documents/file:sub/outline.pdf").json()["metadata"] == {"pages": 4}
    # A file the server refuses stops the upload with the server's error, naming the file.
    (folder / "zz-locked.pdf").write_bytes(_file("encrypted-file.pdf"))
    assert cli.main(["ingest", str(folder), "--url", "http://rag.test"]) == 1
    assert "zz-locked.pdf: the PDF is encrypted" in capsys.readouterr().out


def _finished(client: TestClient, location: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(location).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"the job did not finish: {job}")


def test_a_large_upload_is_a_job_with_progress(client: TestClient) -> None:
    files = [
        ("file", (f"note-{i:02d}.md", f"# Note {i}\n\nNote {i} says {i * 7}.".encode(), "text/markdown"))
        for i in range(21)
    ]
    resp = client.post("/v1/documents", files=files)  # over corpus.async_files (20): answered at once
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["object"] == "ingest.job" and job["status"] == "queued" and job["files"] == 21
    assert resp.headers["location"] == f"/v1/documents/jobs/{job['id']}"
    done = _finished(client, resp.headers["location"])
    assert (done["status"], done["read"], done["documents"], done["indexed"]) == ("succeeded", 21, 21, 21)
    assert done["chunks"] >= 21 and len(done["added"]) == 21 and done["generation"] >= 1
    assert len(_ids(client)) == 21
    # A client asks for a job for any upload; a raw PDF keeps its id and its pages.
    pdf = client.post(
        "/v1/documents?id=outline",
        content=_file("pdflatex-outline.pdf"),
        headers={"content-type": PDF, "prefer": "respond-async"},
    )
    assert pdf.status_code == 202
    assert _finished(client, pdf.headers["location"])["added"] == ["outline"]
    assert client.get("/v1/documents/outline").json()["metadata"] == {"pages": 4}


def test_a_job_with_a_bad_file_names_it_and_writes_nothing(client: TestClient) -> None:
    files = [
        ("file", ("crazyones.pdf", _file("crazyones.pdf"), PDF)),
        ("file", ("locked.pdf", _file("encrypted-file.pdf"), PDF)),
    ]
    resp = client.post("/v1/documents", files=files, headers={"prefer": "respond-async"})
    done = _finished(client, resp.headers["location"])
    assert done["status"] == "failed" and done["read"] == 1 and done["refused"] == 1
    assert done["errors"] == [
        {"file": "locked.pdf", "message": "locked.pdf: the PDF is encrypted; send it without a password"}
    ]
    assert _ids(client) == []
    unknown = client.get("/v1/documents/jobs/job-0000")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
