"""`POST /v1/documents`: JSON with a list of documents, or one document as its own media type."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError

from retrieval.documents import Document
from retrieval.errors import DocumentFormatError, UnsupportedDocumentTypeError
from retrieval.ingest import parse, type_for_media
from services.errors import InvalidRequestError
from services.http.deps import Service
from services.schemas import DocumentsRequest

router = APIRouter()


def _from_json(raw: bytes) -> list[Document]:
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
            docs += parse(d.text, d.type, title=d.title, doc_id=d.id, metadata=d.metadata, source="api")
        except (DocumentFormatError, UnsupportedDocumentTypeError) as exc:
            raise type(exc)(f"documents[{n}]: {exc}") from exc
    return docs


@router.post("/v1/documents")
async def documents(request: Request, svc: Service) -> dict[str, Any]:
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    raw = await request.body()
    if media == "application/json":
        docs = _from_json(raw)
    else:
        kind = type_for_media(media)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError("the document is not UTF-8 text", code="invalid_encoding") from exc
        docs = parse(
            text,
            kind,
            title=request.query_params.get("title", ""),
            doc_id=request.query_params.get("id", ""),
            source="api",
        )
    return {"object": "ingest.result", **await svc.ingest(docs)}
