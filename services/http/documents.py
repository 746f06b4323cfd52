"""The documents API, scoped by namespace: ``POST /v1/documents`` (JSON with a list of documents, one
document as its own media type: text, markdown, JSONL, HTML, PDF or Word, or files as a multipart form),
``GET /v1/documents`` (the caller's, paged), ``GET`` and ``DELETE
/v1/documents/{id}``.

A tenant writes and deletes only its own namespace and reads its own and the shared one; an operator
(or anyone, on an open server) writes the shared namespace and may name any namespace with
``?namespace=``. Ids are scoped to a namespace: two tenants may each hold a document "faq" and neither sees,
replaces or learns of the other's; a tenant's own document shadows a shared one of the same id."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile

from retrieval.documents import Document
from retrieval.errors import DocumentFormatError, DocumentOwnershipError, UnsupportedDocumentTypeError
from retrieval.ingest import MAX_DOCUMENTS, parse, parse_file, read_upload, type_for_media
from services.errors import InvalidRequestError, PermissionDeniedError
from services.http.auth import Principal, principal
from services.http.deps import GENERATION_HEADER, Service, min_generation
from services.http.schemas import DocumentsRequest
from services.pipeline.jobs import IngestJobs, Reader

router = APIRouter()

# Files one multipart upload may carry (Starlette's form parser refuses more with a 400).
MAX_UPLOAD_FILES = 1000


def _from_json(raw: bytes, namespace: str) -> list[Document]:
    try:
        payload = json.loads(raw or b"null")
    except ValueError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    try:
        parsed = DocumentsRequest.model_validate(payload)
    except Exception as exc:
        raise RequestValidationError(getattr(exc, "errors", lambda: [])()) from exc
    docs: list[Document] = []
    for n, d in enumerate(parsed.documents):
        try:
            docs += parse(
                d.text,
                d.type,
                title=d.title,
                doc_id=d.id,
                metadata=d.metadata,
                source="api",
                namespace=namespace,
                max_documents=MAX_DOCUMENTS - len(docs),
            )
        except (DocumentFormatError, UnsupportedDocumentTypeError) as exc:
            raise type(exc)(f"documents[{n}]: {exc}") from exc
    return docs


def _from_files(files: list[tuple[str, str, bytes]], namespace: str) -> list[Document]:
    """Documents from (file name, media type, bytes); every file is read before anything is written, and a file
    that cannot be read refuses the whole upload, naming it."""
    docs: list[Document] = []
    for name, media, raw in files:
        docs += read_upload(name, media, raw, namespace)
        if len(docs) > MAX_DOCUMENTS:
            raise DocumentFormatError(f"the upload holds more than {MAX_DOCUMENTS} documents")
    return docs


async def _multipart(request: Request) -> list[tuple[str, str, bytes]]:
    try:
        form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_UPLOAD_FILES)
    except Exception as exc:  # noqa: BLE001 - Starlette's parse errors (too many files, a broken boundary)
        raise InvalidRequestError(f"the multipart body cannot be read: {exc}", code="invalid_multipart") from exc
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise InvalidRequestError("the multipart form holds no file (send each as a `file` field)", param="file")
        return [(u.filename or "", u.content_type or "", await u.read()) for u in uploads]
    finally:
        await form.close()


def write_namespace(who: Principal, asked: str | None) -> str:
    """Where the caller's documents go: a tenant's own namespace; an operator's ``?namespace=`` or the
    shared one."""
    if who.operator:
        return asked or who.namespace
    if asked not in (None, who.namespace):
        raise PermissionDeniedError(
            f"namespace {asked!r} is not yours; a tenant writes only its own ({who.namespace!r})",
            param="namespace",
            code="namespace_not_allowed",
        )
    return who.namespace


def read_namespaces(who: Principal, asked: str | None) -> list[str] | None:
    """What the caller may list: a tenant its own and the shared namespace (or one of them, asked); an
    operator everything, or the namespace asked."""
    if who.operator:
        return [asked] if asked else None
    readable = list(who.readable)
    if asked is None:
        return readable
    if asked not in readable:
        raise PermissionDeniedError(f"namespace {asked!r} is not readable with this key", param="namespace")
    return [asked]


@router.post("/v1/documents")
async def add_documents(
    request: Request,
    response: Response,
    svc: Service,
    namespace: str | None = Query(None, min_length=1, max_length=128),
) -> dict[str, Any]:
    who = principal(request)
    target = write_namespace(who, namespace)
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    prefer = request.headers.get("prefer", "")
    if media == "multipart/form-data":
        files = await _multipart(request)
        if svc.jobs.wants_job(len(files), sum(len(raw) for _, _, raw in files), prefer):
            return await _job(svc.jobs, response, files, target, read_upload, who.tenant)
        docs = await asyncio.to_thread(_from_files, files, target)
    elif media == "application/json":
        docs = _from_json(await request.body(), target)
    else:
        kind = type_for_media(media)
        raw = await request.body()
        title = request.query_params.get("title", "")
        doc_id = request.query_params.get("id", "")

        def read(_name: str, _media: str, body: bytes, ns: str) -> list[Document]:
            return parse_file(
                body, kind, title=title, doc_id=doc_id, source="api", namespace=ns, max_documents=MAX_DOCUMENTS
            )

        if svc.jobs.wants_job(1, len(raw), prefer):
            return await _job(svc.jobs, response, [(doc_id or title or "upload", media, raw)], target, read, who.tenant)
        # PDFium, python-docx and trafilatura hold the CPU: off the event loop.
        docs = await asyncio.to_thread(read, "", media, raw, target)
    # A tenant with a budget pays for the text it has embedded (services/pipeline/corpus.py).
    result = await svc.corpus.ingest(docs, who.tenant)
    # The corpus generation that holds the batch: send it back as X-Ragyard-Min-Generation and any retriever
    # replica answers with these documents in view.
    response.headers[GENERATION_HEADER] = str(result.get("generation", 0))
    return {"object": "ingest.result", "namespace": target, **result}


async def _job(
    jobs: IngestJobs,
    response: Response,
    files: list[tuple[str, str, bytes]],
    target: str,
    reader: Reader,
    tenant: str | None,
) -> dict[str, Any]:
    """Answer with a job (202, its record and where to read it) and run it in the background."""
    job = await jobs.submit(files, target, reader, tenant)
    response.status_code = 202
    response.headers["location"] = f"/v1/documents/jobs/{job.id}"
    return job.model_dump()


@router.get("/v1/documents/jobs/{job_id}")
async def get_job(request: Request, svc: Service, job_id: str) -> dict[str, Any]:
    """An ingestion job's progress: files read, documents indexed, errors per file, the corpus generation. A tenant
    reads its own namespace's jobs; an operator any."""
    who = principal(request)
    job = await svc.jobs.get(job_id, None if who.operator else [who.namespace])
    return job.model_dump()


@router.get("/v1/documents")
async def list_documents(
    request: Request,
    svc: Service,
    namespace: str | None = Query(None, min_length=1, max_length=128),
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(None, max_length=512, description="The last id of the previous page."),
) -> dict[str, Any]:
    docs = await svc.retriever.documents(read_namespaces(principal(request), namespace), min_generation(request))
    if after is not None:
        docs = [d for d in docs if d["id"] > after]
    page = docs[:limit]
    # Documents come by id, then namespace: a page never ends inside one id's namespaces, so ``after`` (an id)
    # resumes without skipping any.
    while len(page) < len(docs) and page and docs[len(page)]["id"] == page[-1]["id"]:
        page = docs[: len(page) + 1]
    return {
        "object": "list",
        "data": [{"object": "document", **d} for d in page],
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(docs) > len(page),
    }


@router.get("/v1/documents/{doc_id:path}")
async def get_document(
    request: Request, svc: Service, doc_id: str, namespace: str | None = Query(None, min_length=1, max_length=128)
) -> dict[str, Any]:
    """The caller's own document of this id, else the shared one (or the namespace asked)."""
    found = await svc.retriever.document(
        doc_id, read_namespaces(principal(request), namespace), min_generation(request)
    )
    return {"object": "document", **found}


@router.delete("/v1/documents/{doc_id:path}")
async def delete_document(
    request: Request,
    response: Response,
    svc: Service,
    doc_id: str,
    namespace: str | None = Query(None, min_length=1, max_length=128),
) -> dict[str, Any]:
    who = principal(request)
    if who.operator:
        # An operator names the namespace, or the id must be held by one namespace alone.
        target = namespace
        if target is not None:
            await svc.retriever.document(doc_id, [target], min_generation(request))
    else:
        target = write_namespace(who, namespace)
        found = await svc.retriever.document(doc_id, read_namespaces(who, None), min_generation(request))
        if found["namespace"] != target:
            # Only a shared document can be found here and not be the caller's: it is readable, so the refusal
            # names it; another tenant's document of this id is not even seen.
            raise DocumentOwnershipError(f"document {doc_id!r} is in the shared namespace; only an operator removes it")
    result = await svc.retriever.remove(doc_id, target)
    response.headers[GENERATION_HEADER] = str(result.get("generation", 0))
    return {"object": "document.deleted", **result}
