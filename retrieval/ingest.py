"""Read text, markdown, JSONL (the shared/data QA format, or one document a line), PDF, Word (.docx) and HTML
into Documents (the binary formats through `retrieval.formats`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Literal, cast

from core.nesting import lone_surrogate_at, nesting_depth, not_unicode, refuse_json_constant
from retrieval.documents import SHARED_NAMESPACE, Document, check_metadata
from retrieval.errors import DocumentFormatError, UnsupportedDocumentTypeError
from retrieval.formats import Extracted, read_docx, read_html, read_pdf

logger = logging.getLogger(__name__)

DocumentType = Literal["text", "markdown", "jsonl", "html", "pdf", "docx"]
DOCUMENT_TYPES: tuple[DocumentType, ...] = ("text", "markdown", "jsonl", "html", "pdf", "docx")
# Formats read from their bytes by a library (`retrieval.formats`): never decoded as UTF-8 text here.
FILE_TYPES: dict[DocumentType, Callable[[bytes], Extracted]] = {"pdf": read_pdf, "docx": read_docx, "html": read_html}
# Formats a JSON upload may carry in its `text` field (a PDF or a Word file is bytes: send it as itself).
TEXT_TYPES: tuple[DocumentType, ...] = ("text", "markdown", "jsonl", "html")

# Documents one upload may hold, whatever its format (a JSON list, JSONL lines, or both: a JSON list of JSONL
# payloads counts every document in it); the API passes it, the CLI reading local files does not.
MAX_DOCUMENTS = 10_000
# How deep one JSONL line may nest (the edge bounds JSON bodies as deep, `server.max_json_depth`'s default).
JSONL_DEPTH = 32

_SUFFIXES: dict[str, DocumentType] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
_MEDIA_TYPES: dict[str, DocumentType] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/jsonlines": "jsonl",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
}


def check_type(doc_type: str) -> DocumentType:
    if doc_type not in DOCUMENT_TYPES:
        raise UnsupportedDocumentTypeError(
            f"unsupported document type {doc_type!r}; supported: {', '.join(DOCUMENT_TYPES)}"
        )
    return cast(DocumentType, doc_type)


def type_for_media(media_type: str) -> DocumentType:
    base = media_type.split(";", 1)[0].strip().lower()
    if base not in _MEDIA_TYPES:
        raise UnsupportedDocumentTypeError(
            f"unsupported content type {base!r}; send application/json, or the raw document as "
            f"{', '.join(sorted(_MEDIA_TYPES))}"
        )
    return _MEDIA_TYPES[base]


def type_for_path(path: PurePath) -> DocumentType:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise UnsupportedDocumentTypeError(
            f"{path.name}: unsupported file type {suffix or '(none)'}; supported: {', '.join(sorted(_SUFFIXES))}"
        )
    return _SUFFIXES[suffix]


def _markdown_title(text: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# "):
            return stripped[2:].strip()
    return ""


def parse(
    content: str,
    doc_type: str,
    *,
    title: str = "",
    doc_id: str = "",
    source: str = "",
    metadata: dict[str, Any] | None = None,
    namespace: str = SHARED_NAMESPACE,
    max_documents: int | None = None,
) -> list[Document]:
    """Parse one uploaded payload into documents of ``namespace`` (JSONL: at most ``max_documents``)."""
    kind = check_type(doc_type)
    if kind == "jsonl":
        return parse_jsonl(content, source=source, namespace=namespace, max_documents=max_documents)
    if kind in FILE_TYPES:
        if kind not in TEXT_TYPES:
            raise DocumentFormatError(
                f"a {kind} file is bytes, not text: send it as its own content type or as a multipart upload"
            )
        return parse_file(
            content.encode("utf-8"),
            kind,
            title=title,
            doc_id=doc_id,
            source=source,
            metadata=metadata,
            namespace=namespace,
        )
    if not content.strip():
        raise DocumentFormatError("the document is empty")
    if kind == "markdown" and not title:
        title = _markdown_title(content)
    return [Document(id=doc_id, title=title, text=content, source=source, metadata=metadata or {}, namespace=namespace)]


def parse_file(
    raw: bytes,
    doc_type: str,
    *,
    title: str = "",
    doc_id: str = "",
    source: str = "",
    metadata: dict[str, Any] | None = None,
    namespace: str = SHARED_NAMESPACE,
    max_documents: int | None = None,
) -> list[Document]:
    """One uploaded file's bytes as documents: PDF, DOCX and HTML through their readers (one document each, a
    PDF's page starts with it, so each chunk is cited with its page), the text formats decoded as UTF-8 (JSONL:
    at most ``max_documents``)."""
    kind = check_type(doc_type)
    if kind not in FILE_TYPES:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentFormatError(f"not UTF-8 text (byte {exc.start}); a {kind} document must be UTF-8") from exc
        return parse(
            text,
            kind,
            title=title,
            doc_id=doc_id,
            source=source,
            metadata=metadata,
            namespace=namespace,
            max_documents=max_documents,
        )
    if not raw.strip():
        raise DocumentFormatError("the file is empty")
    found = FILE_TYPES[kind](raw)
    meta = dict(metadata or {})
    if found.page_starts or kind == "pdf":
        meta.setdefault("pages", len(found.page_starts) + 1)
    return [
        Document(
            id=doc_id,
            title=title or found.title,
            text=found.text,
            source=source,
            metadata=meta,
            namespace=namespace,
            page_starts=found.page_starts,
        )
    ]


def parse_jsonl(
    content: str, *, source: str = "", namespace: str = SHARED_NAMESPACE, max_documents: int | None = None
) -> list[Document]:
    """One JSON object a line: a QA row with ``contexts`` (each context becomes a document, the same
    title and text once), or a document with ``text`` (and optional ``id``, ``title``, ``metadata``). At most
    ``max_documents`` documents when given; an id given twice is the retriever's to judge (the same
    document is taken once, two different ones under one id are refused), as in a JSON upload."""
    docs: list[Document] = []
    contexts_seen: set[str] = set()
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=refuse_json_constant)
        except json.JSONDecodeError as exc:
            raise DocumentFormatError(f"line {lineno}: not valid JSON ({exc.msg})") from exc
        except ValueError as exc:  # NaN or Infinity
            raise DocumentFormatError(f"line {lineno}: not valid JSON ({exc})") from exc
        except RecursionError as exc:
            raise DocumentFormatError(f"line {lineno}: JSON nested too deep") from exc
        if not isinstance(row, dict):
            raise DocumentFormatError(f"line {lineno}: expected a JSON object")
        if nesting_depth(row) > JSONL_DEPTH:
            raise DocumentFormatError(f"line {lineno}: JSON nested deeper than {JSONL_DEPTH} levels")
        bad_text = lone_surrogate_at(row)
        if bad_text is not None:
            raise DocumentFormatError(f"line {lineno}: {not_unicode(bad_text)}")
        if "contexts" in row:
            contexts = row["contexts"]
            if not isinstance(contexts, list):
                raise DocumentFormatError(f"line {lineno}: 'contexts' must be a list")
            for n, ctx in enumerate(contexts):
                if not isinstance(ctx, dict) or not isinstance(ctx.get("text"), str) or not ctx["text"].strip():
                    raise DocumentFormatError(f"line {lineno}: contexts[{n}] needs a non-empty 'text'")
                title = ctx.get("title", "")
                if not isinstance(title, str):
                    raise DocumentFormatError(f"line {lineno}: contexts[{n}].title must be a string")
                doc = Document(title=title, text=ctx["text"], source=source, namespace=namespace)
                if doc.id not in contexts_seen:  # the same context in several QA rows: one document
                    contexts_seen.add(doc.id)
                    docs.append(doc)
        elif "text" in row:
            text, title, did = row["text"], row.get("title", ""), row.get("id", "")
            if not isinstance(text, str) or not text.strip():
                raise DocumentFormatError(f"line {lineno}: 'text' must be a non-empty string")
            if not isinstance(title, str) or not isinstance(did, str | int):
                raise DocumentFormatError(f"line {lineno}: 'title' must be a string and 'id' a string")
            try:
                meta = check_metadata(row.get("metadata") or {})
            except ValueError as exc:
                raise DocumentFormatError(f"line {lineno}: {exc}") from exc
            doc = Document(id=str(did), title=title, text=text, source=source, metadata=meta, namespace=namespace)
            docs.append(doc)
        else:
            raise DocumentFormatError(f"line {lineno}: expected 'contexts' (QA format) or 'text' (a document)")
        if max_documents is not None and len(docs) > max_documents:
            raise DocumentFormatError(f"line {lineno}: the upload holds more than {max_documents} documents")
    if not docs:
        raise DocumentFormatError("the JSONL payload holds no documents")
    return docs


# Media types a browser or a client sends for "some file": the file's name says what it is.
_GENERIC_MEDIA = {"", "application/octet-stream", "binary/octet-stream", "application/x-www-form-urlencoded"}


def upload_type(name: str, media: str) -> DocumentType:
    """An uploaded file's type: its media type, or its name's suffix when the media type says nothing (or is a
    browser's guess this reader does not know)."""
    base = media.split(";", 1)[0].strip().lower()
    if base not in _GENERIC_MEDIA and base in _MEDIA_TYPES:
        return _MEDIA_TYPES[base]
    if base not in _GENERIC_MEDIA and not PurePosixPath(name).suffix:
        return type_for_media(base)  # refused, naming the media type
    return type_for_path(PurePosixPath(name or "upload"))


def read_upload(name: str, media: str, raw: bytes, namespace: str = SHARED_NAMESPACE) -> list[Document]:
    """One uploaded file's documents. Its id is ``file:<name>`` (as `ragyard ingest` names a file by its path, so
    an edited file uploaded again replaces its old version) and its title the file's own, else its name's stem; a
    file that cannot be read is refused with its name."""
    try:
        found = parse_file(
            raw,
            upload_type(name, media),
            doc_id=f"file:{name}" if name else "",
            source=name or "api",
            namespace=namespace,
        )
    except (DocumentFormatError, UnsupportedDocumentTypeError) as exc:
        raise type(exc)(f"{name or 'the file'}: {exc}") from exc
    stem = PurePosixPath(name).stem if name else ""
    return [d if d.title else d.model_copy(update={"title": stem}) for d in found]


def files_under(path: str | Path) -> list[tuple[Path, str]]:
    """(file, name) of a file, or of every supported file under a folder (sorted, recursive); a file's name is its
    path relative to the folder, which makes its id (``file:<name>``): an edited file replaces its old version."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)
        return [(f, f.relative_to(root).as_posix()) for f in files]
    if root.is_file():
        type_for_path(root)
        return [(root, root.name)]
    raise FileNotFoundError(f"{root} does not exist")


def load_file(file: Path, name: str) -> list[Document]:
    """One file's documents (none when it is empty); a file that cannot be read is refused, naming it."""
    kind = type_for_path(file)
    raw = file.read_bytes()
    if not raw.strip():
        logger.warning("%s is empty; skipped", file)
        return []
    title = "" if kind != "text" else file.stem
    doc_id = "" if kind == "jsonl" else f"file:{name}"
    try:
        docs = parse_file(raw, kind, title=title, doc_id=doc_id, source=str(file))
    except DocumentFormatError as exc:
        raise DocumentFormatError(f"{file}: {exc}") from exc
    return [doc if doc.title else doc.model_copy(update={"title": file.stem}) for doc in docs]


def load_path(path: str | Path) -> list[Document]:
    """Documents from a file, or from every supported file under a folder (sorted, recursive)."""
    return [doc for file, name in files_under(path) for doc in load_file(file, name)]
