"""Ingestion jobs: a large upload is answered at once with a job, read and indexed in the background, its progress
recorded where every gateway replica can read it.

A job first reads every file (a file that cannot be read is recorded with its reason, and then nothing of the
upload is written, as for an upload answered at once), then indexes the documents ``corpus.job_batch_documents``
at a time, recording after each step how many are indexed and the corpus generation that holds them. The record
lives in a key-value backend (`cache.backends`: memory, or Redis shared by the replicas); a running job touches it
every few seconds, and one that has not moved for `STALE_S` (its gateway stopped, or restarted) is reported
failed, never left "running" forever. A tenant sees only its own namespace's jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from cache.backends import open_backend
from cache.base import KVBackend
from core.errors import RagyardError
from retrieval.documents import Document
from retrieval.errors import DocumentFormatError, UnsupportedDocumentTypeError
from retrieval.ingest import MAX_DOCUMENTS, read_upload
from services.errors import NotFoundError, RateLimitError

if TYPE_CHECKING:
    from services.config import AppConfig
    from services.pipeline.corpus import CorpusWork

logger = logging.getLogger(__name__)

JOB_TTL_S = 7 * 86400  # how long a job's record is kept after its last change
HEARTBEAT_S = 5.0  # a running job touches its record this often, whatever step it is in
STALE_S = 60.0  # a queued or running job whose record has not moved for this long has lost its gateway
SAVE_EVERY_S = 0.5  # progress within a step is written at most this often

Status = Literal["queued", "running", "succeeded", "failed"]
# One file (name, media type, bytes) of a namespace into its documents; refuses with DocumentFormatError.
Reader = Callable[[str, str, bytes, str], list[Document]]


class FileError(BaseModel):
    file: str
    message: str


class IngestJob(BaseModel):
    """A job as `GET /v1/documents/jobs/{id}` shows it."""

    object: Literal["ingest.job"] = "ingest.job"
    id: str
    namespace: str
    status: Status = "queued"
    stage: Literal["queued", "reading", "indexing", "done"] = "queued"
    files: int = Field(description="Files in the upload.")
    bytes: int
    read: int = Field(0, description="Files read so far.")
    refused: int = Field(0, description="Files that could not be read (see `errors`).")
    documents: int = Field(0, description="Documents the files hold (known once every file is read).")
    indexed: int = Field(0, description="Documents chunked, embedded and searchable so far.")
    chunks: int = Field(0, description="Chunks those documents added.")
    added: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    errors: list[FileError] = Field(default_factory=list)
    error: str | None = Field(None, description="Why the job failed, when it did.")
    generation: int | None = Field(None, description="The corpus generation that holds what is indexed so far.")
    tokens: int = Field(0, description="Tokens of text embedded so far (what a tenant with a budget is charged).")
    created_at: float
    updated_at: float
    finished_at: float | None = None


def _key(job_id: str) -> str:
    return f"ingest-job:{job_id}"


class IngestJobs:
    """Starts jobs on this gateway's event loop and reads any job's record."""

    def __init__(self, config: AppConfig, corpus: CorpusWork, backend: KVBackend | None = None) -> None:
        self.config = config.corpus
        self.corpus = corpus
        url = self.config.jobs_url or config.cache.response_cache_url
        self.backend = backend or open_backend(url, prefix="ragyard:", max_entries=10_000, ttl_s=JOB_TTL_S)
        self._running: dict[str, int] = {}  # namespace -> jobs running here
        self._tasks: set[asyncio.Task[None]] = set()

    def wants_job(self, files: int, size: int, prefer: str) -> bool:
        """Whether an upload of ``files`` files and ``size`` bytes is answered with a job."""
        asked = any(p.strip().lower() == "respond-async" for p in prefer.split(","))
        return asked or files > self.config.async_files or size > self.config.async_bytes

    async def submit(
        self,
        files: list[tuple[str, str, bytes]],
        namespace: str,
        reader: Reader = read_upload,
        tenant: str | None = None,
    ) -> IngestJob:
        """Record a job for these (name, media type, bytes) files and start it; 429 when the namespace already has
        `max_jobs_per_tenant` running here. ``reader`` turns one file into documents (by default as a multipart
        upload's file: its id from its name). A ``tenant`` with a budget pays for each step's embedded text; a step
        its budget cannot cover fails the job there, with what was indexed before it kept."""
        if self._running.get(namespace, 0) >= self.config.max_jobs_per_tenant:
            error = RateLimitError(
                f"{self._running[namespace]} ingestion jobs of {namespace!r} are running; wait for one to finish",
                code="too_many_jobs",
            )
            error.retry_after = 5
            raise error
        now = time.time()
        job = IngestJob(
            id=f"job-{uuid.uuid4().hex}",
            namespace=namespace,
            files=len(files),
            bytes=sum(len(raw) for _, _, raw in files),
            created_at=now,
            updated_at=now,
        )
        await self._save(job)
        self._running[namespace] = self._running.get(namespace, 0) + 1
        task = asyncio.create_task(self._run(job, files, reader, tenant))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def get(self, job_id: str, namespaces: list[str] | None) -> IngestJob:
        """A job readable by a caller who writes ``namespaces`` (None: an operator, every job); 404 otherwise."""
        raw = await self.backend.aget(_key(job_id)) if job_id.startswith("job-") else None
        job = IngestJob.model_validate_json(raw) if raw is not None else None
        if job is None or (namespaces is not None and job.namespace not in namespaces):
            # Another tenant's job is not found: its existence is not this caller's business.
            raise NotFoundError(f"no ingestion job {job_id!r}", param="job_id", code="job_not_found")
        if job.status in ("queued", "running") and time.time() - job.updated_at > STALE_S:
            job.status, job.stage = "failed", "done"
            job.error = (
                f"the gateway running this job stopped: no progress for {STALE_S:.0f} s; what it indexed "
                f"({job.indexed} of {job.documents} documents) is searchable, upload the rest again"
            )
            job.finished_at = time.time()
            await self._save(job)
        return job

    async def wait(self) -> None:
        """Until every job started here has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _save(self, job: IngestJob) -> None:
        job.updated_at = time.time()
        await self.backend.aput(_key(job.id), job.model_dump_json().encode("utf-8"), JOB_TTL_S)

    async def _heartbeat(self, job: IngestJob) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self._save(job)

    async def _run(
        self, job: IngestJob, files: list[tuple[str, str, bytes]], reader: Reader, tenant: str | None = None
    ) -> None:
        beat = asyncio.create_task(self._heartbeat(job))
        try:
            job.status, job.stage = "running", "reading"
            await self._save(job)
            docs = await self._read(job, files, reader)
            if job.errors:
                job.status = "failed"
                job.error = "the upload cannot be indexed as it is (see errors); nothing was written"
                return
            job.documents, job.stage = len(docs), "indexing"
            await self._save(job)
            step = self.config.job_batch_documents
            for at in range(0, len(docs), step):
                result = await self.corpus.ingest(docs[at : at + step], tenant)
                job.indexed += len(docs[at : at + step])
                job.chunks += int(result.get("chunks_added", 0))
                job.added += result.get("added", [])
                job.updated += result.get("updated", [])
                job.unchanged += result.get("unchanged", [])
                job.generation = int(result.get("generation", 0))
                job.tokens += int(result.get("tokens", 0))
                await self._save(job)
            job.status = "succeeded"
        except asyncio.CancelledError:
            job.status, job.error = "failed", "the gateway stopped while the job ran"
            raise
        except Exception as exc:  # noqa: BLE001 - the job's record says why, whatever failed
            job.status = "failed"
            reason = str(exc) if isinstance(exc, RagyardError) else f"{type(exc).__name__}: {exc}"
            job.error = f"indexing stopped after {job.indexed} of {job.documents} documents: {reason}"
            logger.exception("ingestion job %s failed", job.id)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            job.stage, job.finished_at = "done", time.time()
            self._running[job.namespace] -= 1
            with contextlib.suppress(Exception):  # a record that cannot be written goes stale and reads as failed
                await self._save(job)

    async def _read(self, job: IngestJob, files: list[tuple[str, str, bytes]], reader: Reader) -> list[Document]:
        docs: list[Document] = []
        saved = time.monotonic()
        for name, media, raw in files:
            try:
                # PDFium, python-docx and trafilatura hold the CPU: off the event loop.
                docs += await asyncio.to_thread(reader, name, media, raw, job.namespace)
                job.read += 1
            except (DocumentFormatError, UnsupportedDocumentTypeError) as exc:
                job.refused += 1
                job.errors.append(FileError(file=name, message=str(exc)))
            if time.monotonic() - saved > SAVE_EVERY_S:
                await self._save(job)
                saved = time.monotonic()
        if len(docs) > MAX_DOCUMENTS:
            job.errors.append(FileError(file="", message=f"the upload holds more than {MAX_DOCUMENTS} documents"))
        return docs
