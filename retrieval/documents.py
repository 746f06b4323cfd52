"""Documents, chunks and passages: the values retrieval moves around."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import (
    Any,
    NotRequired,  # pydantic and FastAPI read these on Python 3.11
)

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from core.nesting import nesting_depth

# The namespace of the operators' documents (the bundled corpus, `ragyard ingest`, uploads with an operator
# key or to an open server): every tenant reads it, only an operator writes it. A tenant's documents live
# in the namespace named after the tenant.
SHARED_NAMESPACE = "shared"

METADATA_DEPTH = 4  # levels of a document's metadata object (the object itself is level 1)
METADATA_BYTES = 8192


def check_metadata(value: Any) -> dict[str, Any]:
    """A document's metadata, refused (ValueError) unless it is a JSON object at most ``METADATA_DEPTH``
    levels deep and ``METADATA_BYTES`` bytes as JSON. The walk is iterative: no recursion limit is near."""
    if not isinstance(value, dict):
        raise ValueError("metadata must be a JSON object")
    if nesting_depth(value) > METADATA_DEPTH:
        raise ValueError(f"metadata nests more than {METADATA_DEPTH} levels")
    try:
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata is not JSON: {exc}") from exc
    if size > METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON; at most {METADATA_BYTES}")
    return value


def content_hash(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class Document(BaseModel):
    """A document as ingested. ``id`` defaults to a hash of title and text (and of the namespace, outside
    the shared one), so re-ingesting the same content is recognised, and the same content in two tenants'
    namespaces is two documents; an explicit id lets a new version replace the old one."""

    model_config = ConfigDict(frozen=True)

    id: str = Field("", description="Stable id; empty means derived from title and text.")
    title: str = ""
    text: str
    source: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    namespace: str = Field(SHARED_NAMESPACE, min_length=1, description="Whose document it is.")
    page_starts: list[int] = Field(
        default_factory=list, description="Where each page after the first begins in `text` (a PDF's); empty: no pages."
    )

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            scope = () if self.namespace == SHARED_NAMESPACE else (self.namespace,)
            object.__setattr__(self, "id", "doc-" + content_hash(*scope, self.title, self.text)[:24])

    @property
    def fingerprint(self) -> str:
        return content_hash(self.title, self.text)


SECTION_SEPARATOR = " › "


def chunk_heading(title: str, section: str) -> str:
    """A chunk's title and section as one line ("Ragyard › Quick start")."""
    return SECTION_SEPARATOR.join(part for part in (title, section) if part)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, the unit that is embedded and retrieved."""

    chunk_id: int
    doc_id: str
    title: str
    text: str
    chunk_index: int
    start: int
    source: str = ""
    namespace: str = SHARED_NAMESPACE
    page: int = 0  # the page (from 1) its start is on, for documents with pages (PDF); 0: none
    # Its document's fingerprint when it was indexed: an answer built from this chunk is current while the
    # document's fingerprint is still this one (the response cache checks it).
    fingerprint: str = ""
    # The headings it sits under in its document, below the title ("Quick start › Two commands"; "": none): read with
    # the title by the embedder and BM25, and shown beside a citation's title, so a chunk of a long document says
    # which part it is from (`retrieval.chunking.section_trails`). The prompt shows the title alone.
    section: str = ""

    @property
    def heading(self) -> str:
        """The title and the section, as the embedder and BM25 read them above the chunk's text."""
        return chunk_heading(self.title, self.section)


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk with its similarity score."""

    chunk: Chunk
    score: float


class DocumentRecord(TypedDict):
    """A document as the store writes it to a snapshot and the corpus log carries it: its fields and its
    chunks' (start, text)."""

    id: str
    namespace: str
    fingerprint: str
    title: str
    source: str
    metadata: dict[str, Any]  # the caller's own JSON object, checked by `check_metadata`
    pieces: list[tuple[int, str]]
    page_starts: NotRequired[list[int]]  # a paged document's (PDF): where each page after the first begins
    sections: NotRequired[list[str]]  # each piece's headings (`Chunk.section`); absent in records from before them
    chunking: NotRequired[str]  # how the pieces were cut (`Chunker.signature`); absent in records from before it


# A stored document's key: its namespace and its id there. Ids are scoped to a namespace: two tenants may each
# hold a document "faq", and neither's writes touch (or reveal) the other's.
DocKey = tuple[str, str]


class StoredDocument(TypedDict):
    """A document as the store holds it in memory, by (namespace, id): its fields and its chunks' ids."""

    id: NotRequired[str]  # absent in snapshots from before ids were scoped to a namespace: the docs' key
    namespace: NotRequired[str]  # absent in snapshots from before namespaces: the shared one
    fingerprint: str
    title: str
    source: str
    metadata: dict[str, Any]
    chunk_ids: list[int]
    page_starts: NotRequired[list[int]]
    flagged: NotRequired[list[FlaggedChunk]]  # chunks the injection screen flagged at ingest
    chunking: NotRequired[str]  # `Chunker.signature` of its chunks; absent: cut before signatures were kept


class FlaggedChunk(TypedDict):
    """A chunk whose text tries to instruct the model (`retrieval.screening`), and the rules it matched."""

    chunk: int
    rules: list[str]


class DocumentSummary(TypedDict):
    """A stored document as the documents API lists it."""

    id: str
    namespace: str
    title: str
    source: str
    metadata: dict[str, Any]
    chunks: int
    flagged: list[FlaggedChunk]  # chunks the injection screen flagged at ingest (empty: none)


class CorpusStats(TypedDict):
    documents: int
    chunks: int
    generation: int  # the corpus generation this replica holds
    embedder: str
    corpus_log: bool  # whether a corpus log is the store of record


class IngestResult(TypedDict):
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    chunks_added: int
    generation: int  # the corpus generation that holds the batch
    tokens: int  # tokens of text embedded: the documents added or updated (unchanged ones cost nothing)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    chunks_added: int = 0
    # The corpus generation that holds the batch (a later request may ask for at least this one).
    generation: int = 0
    tokens: int = 0  # tokens of text embedded (the retriever service counts them; what a tenant is charged)

    def as_dict(self) -> IngestResult:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "chunks_added": self.chunks_added,
            "generation": self.generation,
            "tokens": self.tokens,
        }
