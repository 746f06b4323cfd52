"""Request bodies of the HTTP API (OpenAI chat completions plus Ragyard's own routes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrieval.documents import METADATA_BYTES, METADATA_DEPTH, check_metadata
from retrieval.ingest import DOCUMENT_TYPES

MAX_MESSAGES = 512  # messages in one chat request
MAX_PARTS = 64  # content parts in one message


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="system, developer (treated as system), user or assistant."
    )
    content: str | list[TextPart] | None = Field(
        description="A string, or a list of text parts.", json_schema_extra={"maxItems": MAX_PARTS}
    )
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_type(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str | list):
            raise ValueError("content must be a string or a list of {'type': 'text', 'text': ...} parts")
        if isinstance(value, list) and len(value) > MAX_PARTS:
            raise ValueError(f"at most {MAX_PARTS} content parts")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's fields that change the output are honoured or refused; the rest are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="'auto' or a configured model id.")
    messages: list[ChatMessageIn] = Field(
        min_length=1, max_length=MAX_MESSAGES, description="The conversation; the last is the user's."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="A 64-bit signed integer.")
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    user: str | None = None
    # Ragyard extensions (the openai client sends them through `extra_body`).
    policy: str | None = Field(None, description="Retrieval policy; default: the router's choice.")
    top_k: int | None = Field(None, gt=0, description="Passages per retrieval step.")
    style: Literal["chat", "short"] = Field("chat", description="'short' asks for the bare answer.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @model_validator(mode="after")
    def _last_is_user(self) -> ChatCompletionRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        if not self.messages[-1].text().strip():
            raise ValueError("the last user message is empty")
        return self

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class QARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=8000, description="The question.")
    model: str = Field("auto", min_length=1, description="'auto' or a configured model id.")
    policy: str | None = Field(None, description="Retrieval policy; default: the router's choice.")
    top_k: int | None = Field(None, gt=0, description="Passages per retrieval step.")
    max_tokens: int | None = Field(None, gt=0, description="Completion token cap.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    style: Literal["chat", "short"] = Field("chat", description="'short' asks for the bare answer.")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the question is empty")
        return value.strip()


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field("", max_length=512, description="Stable id; empty derives one from title and text.")
    title: str = Field("", max_length=1000)
    text: str = Field(min_length=1, description="The document (or, for jsonl, the lines).")
    type: str = Field("text", description=f"One of {', '.join(DOCUMENT_TYPES)}.")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=f"JSON object stored with the document: at most {METADATA_DEPTH} levels deep and "
        f"{METADATA_BYTES} bytes as JSON.",
    )

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)


class DocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, max_length=10000)
