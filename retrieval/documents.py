"""Documents, chunks and passages: the values retrieval moves around."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def content_hash(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class Document(BaseModel):
    """A document as ingested. ``id`` defaults to a hash of title and text, so re-ingesting the same
    content is recognised; an explicit id lets a new version replace the old one."""

    model_config = ConfigDict(frozen=True)

    id: str = Field("", description="Stable id; empty means derived from title and text.")
    title: str = ""
    text: str
    source: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            object.__setattr__(self, "id", "doc-" + content_hash(self.title, self.text)[:24])

    @property
    def fingerprint(self) -> str:
        return content_hash(self.title, self.text)


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


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk with its similarity score."""

    chunk: Chunk
    score: float

    def citation(self) -> dict[str, Any]:
        return {
            "document_id": self.chunk.doc_id,
            "title": self.chunk.title,
            "chunk": self.chunk.chunk_index,
            "score": round(self.score, 4),
            "text": self.chunk.text,
            "source": self.chunk.source,
        }


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    chunks_added: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "chunks_added": self.chunks_added,
        }
