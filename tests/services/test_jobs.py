"""Ingestion jobs on their own (a corpus that answers when told to): progress while a job runs, the per-namespace
limit, a failure part way reported with what was indexed, and a job whose gateway went away reported failed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from cache.memory_backend import MemoryBackend
from retrieval.documents import Document
from services.config import load_config
from services.errors import NotFoundError, RateLimitError
from services.pipeline.jobs import IngestJob, IngestJobs

pytestmark = pytest.mark.unit

FILES = Path(__file__).parents[1] / "retrieval" / "files"


class HeldCorpus:
    """`CorpusWork.ingest` that waits for `release` before each batch and fails on the batch numbered `fail_at`."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.release = asyncio.Event()
        self.batches: list[list[Document]] = []
        self.fail_at = fail_at

    async def ingest(self, docs: list[Document], tenant: str | None = None) -> dict[str, Any]:
        await self.release.wait()
        if self.fail_at is not None and len(self.batches) == self.fail_at:
            raise RuntimeError("the retriever replica died")
        self.batches.append(docs)
        return {
            "added": [d.id for d in docs],
            "updated": [],
            "unchanged": [],
            "chunks_added": 2 * len(docs),
            "generation": len(self.batches),
        }


def _jobs(corpus: HeldCorpus, **corpus_config: Any) -> IngestJobs:
    config = load_config({"corpus": {"ingest_on_start": False, "job_batch_documents": 2, **corpus_config}})
    return IngestJobs(config, corpus, MemoryBackend())  # type: ignore[arg-type]


def _notes(n: int) -> list[tuple[str, str, bytes]]:
    return [(f"note-{i}.md", "text/markdown", f"# Note {i}\n\nBody {i}.".encode()) for i in range(n)]


async def _until(jobs: IngestJobs, job_id: str, what: Any, ns: str = "acme") -> Any:
    deadline = time.monotonic() + 10
    job = None
    while time.monotonic() < deadline:
        job = await jobs.get(job_id, [ns])
        if what(job):
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"the job never got there: {job}")


def test_progress_is_visible_while_a_job_runs_and_one_namespace_is_bounded() -> None:
    async def run() -> None:
        corpus = HeldCorpus()
        jobs = _jobs(corpus, max_jobs_per_tenant=1)
        job = await jobs.submit(_notes(5), "acme")
        assert job.status == "queued" and job.files == 5
        held = await _until(jobs, job.id, lambda j: j.stage == "indexing")
        assert (held.status, held.read, held.documents, held.indexed) == ("running", 5, 5, 0)
        with pytest.raises(RateLimitError, match="running") as refused:
            await jobs.submit(_notes(1), "acme")
        assert refused.value.code == "too_many_jobs" and refused.value.retry_after
        other = await jobs.submit(_notes(1), "globex")  # another namespace is not held back
        with pytest.raises(NotFoundError):
            await jobs.get(job.id, ["globex"])  # nor does it see acme's job
        corpus.release.set()
        done = await _until(jobs, job.id, lambda j: j.status != "running")
        assert (done.status, done.stage, done.indexed, done.chunks) == ("succeeded", "done", 5, 10)
        assert done.added == [f"file:note-{i}.md" for i in range(5)] and done.finished_at
        await jobs.wait()
        assert (await jobs.get(other.id, ["globex"])).status == "succeeded"
        assert (await jobs.get(job.id, None)).status == "succeeded"  # an operator reads every job
        acme_batches = [b for b in corpus.batches if b[0].namespace == "acme"]
        assert [len(b) for b in acme_batches] == [2, 2, 1]
        # The namespace's slot is free again.
        await jobs.submit(_notes(1), "acme")
        await jobs.wait()

    asyncio.run(run())


def test_a_bad_file_fails_the_job_before_anything_is_written() -> None:
    async def run() -> None:
        corpus = HeldCorpus()
        corpus.release.set()
        jobs = _jobs(corpus)
        files = [*_notes(2), ("locked.pdf", "application/pdf", (FILES / "encrypted-file.pdf").read_bytes())]
        job = await jobs.submit(files, "acme")
        await jobs.wait()
        done = await jobs.get(job.id, ["acme"])
        assert (done.status, done.read, done.refused, done.indexed) == ("failed", 2, 1, 0)
        assert [e.file for e in done.errors] == ["locked.pdf"] and "encrypted" in done.errors[0].message
        assert "nothing was written" in (done.error or "") and corpus.batches == []

    asyncio.run(run())


def test_a_failure_part_way_says_what_was_indexed() -> None:
    async def run() -> None:
        corpus = HeldCorpus(fail_at=1)
        corpus.release.set()
        jobs = _jobs(corpus)
        job = await jobs.submit(_notes(5), "acme")
        await jobs.wait()
        done = await jobs.get(job.id, ["acme"])
        assert (done.status, done.indexed, done.documents, done.generation) == ("failed", 2, 5, 1)
        assert "indexing stopped after 2 of 5 documents" in (done.error or "")
        assert "the retriever replica died" in (done.error or "")

    asyncio.run(run())


def test_a_job_whose_gateway_stopped_is_reported_failed() -> None:
    async def run() -> None:
        corpus = HeldCorpus()  # never released: the job waits in its first batch
        jobs = _jobs(corpus)
        job = await jobs.submit(_notes(3), "acme")
        await _until(jobs, job.id, lambda j: j.stage == "indexing")
        # The gateway shutting down cancels its jobs: each says so in its record.
        for task in list(jobs._tasks):
            task.cancel()
        await jobs.wait()
        cancelled = await jobs.get(job.id, ["acme"])
        assert cancelled.status == "failed" and cancelled.error == "the gateway stopped while the job ran"
        # A gateway killed outright writes nothing more: its job's record stops moving, and once it is older than
        # STALE_S any replica reports the job failed, with what was indexed.
        now = time.time()
        lost = IngestJob(
            id="job-lost",
            namespace="acme",
            status="running",
            stage="indexing",
            files=3,
            bytes=30,
            read=3,
            documents=3,
            indexed=2,
            created_at=now - 300,
            updated_at=now - 300,
        )
        await jobs.backend.aput("ingest-job:job-lost", lost.model_dump_json().encode())
        stale = await jobs.get("job-lost", ["acme"])
        assert stale.status == "failed" and "no progress for 60 s" in (stale.error or "")
        assert "(2 of 3 documents) is searchable" in (stale.error or "")
        assert (await jobs.get("job-lost", ["acme"])).status == "failed"  # written back
        with pytest.raises(NotFoundError):
            await jobs.get("not-a-job", ["acme"])

    asyncio.run(run())
