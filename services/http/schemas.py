"""Request bodies of the HTTP API (OpenAI chat completions plus Ragyard's own routes)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from retrieval.documents import METADATA_BYTES, METADATA_DEPTH, check_metadata
from retrieval.generation import MAX_TOP_LOGPROBS, ResponseFormat, Temperature
from retrieval.ingest import DOCUMENT_TYPES, MAX_DOCUMENTS

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


def _at_most_four(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list) and len(value) > 4:
        raise ValueError("at most 4 stop sequences")
    return value


# OpenAI's stop sequences: one string or up to four (chat and completions alike).
Stop = Annotated[str | list[str] | None, AfterValidator(_at_most_four)]


def stop_tuple(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


UNSUPPORTED = "unsupported_parameter"  # the error code of a field Ragyard refuses (services/http/errors.py)


def unsupported(field: str, why: str) -> PydanticCustomError:
    return PydanticCustomError(UNSUPPORTED, "{field} is not supported: {why}", {"field": field, "why": why})


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema", description="The JSON Schema.")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Checked here against the JSON Schema metaschema: an invalid schema reaches neither engine (the
        # torch engine's enforcer would fail part way through an answer, vLLM's compiler with its own words).
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value


class ResponseFormatIn(BaseModel):
    """OpenAI's ``response_format``: text (the default), any JSON object, or JSON under a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatIn:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema: {'name': ..., 'schema': {...}}")
        return self

    def constraint(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        schema = self.json_schema.schema_ if self.type == "json_schema" and self.json_schema else None
        return ResponseFormat(type=self.type, json_schema=schema)


# Fields of OpenAI's chat completions that would change the output and that Ragyard does not implement:
# refused with a 400 naming them rather than accepted and dropped. (None and empty values pass: clients
# send some of them as defaults.)
REFUSED_CHAT_FIELDS = {
    "tools": "tool calling is not implemented; retrieval is Ragyard's own tool",
    "functions": "function calling is not implemented",
    "logit_bias": "logit_bias is not implemented",
    "audio": "audio output is not implemented",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "web search is not implemented; Ragyard retrieves from its own documents",
    "reasoning_effort": "no configured model reasons in a separate channel",
    "verbosity": "no configured model takes a verbosity",
}


class ChatCompletionRequest(BaseModel):
    """OpenAI's fields that change the output are honoured or refused (with a 400 naming the field); the
    rest (``user``, ``metadata``, ``store``, ``service_tier``, ...) change nothing here and are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="'auto' or a configured model id.")
    messages: list[ChatMessageIn] = Field(
        min_length=1, max_length=MAX_MESSAGES, description="The conversation; the last is the user's."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: Temperature = 0.0
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Stop = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="A 64-bit signed integer.")
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    user: str | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormatIn | None = None
    tool_choice: Any = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None
    tools: Any = None
    functions: Any = None
    logit_bias: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    # Ragyard extensions (the openai client sends them through `extra_body`).
    policy: str | None = Field(None, description="Retrieval policy; default: the router's choice.")
    top_k: int | None = Field(None, gt=0, description="Passages per retrieval step.")
    style: Literal["chat", "short"] = Field("chat", description="'short' asks for the bare answer.")

    @field_validator(*REFUSED_CHAT_FIELDS)
    @classmethod
    def _refused(cls, value: Any, info: Any) -> Any:
        if value not in (None, [], {}):
            raise unsupported(info.field_name, REFUSED_CHAT_FIELDS[info.field_name])
        return None

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: Any, info: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise unsupported(info.field_name, "tool calling is not implemented")
        return None

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and set(value) - {"text"}:
            raise unsupported("modalities", "only text output")
        return value

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise PydanticCustomError("invalid_request", "top_logprobs needs logprobs: true")
        return self

    def logprobs_asked(self) -> int | None:
        """None: no logprobs; n: each token's with its n most likely alternatives."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _last_is_user(self) -> ChatCompletionRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        if not self.messages[-1].text().strip():
            raise ValueError("the last user message is empty")
        return self

    def stop_list(self) -> tuple[str, ...]:
        return stop_tuple(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class QARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=8000, description="The question.")
    model: str = Field("auto", min_length=1, description="'auto' or a configured model id.")
    policy: str | None = Field(None, description="Retrieval policy; default: the router's choice.")
    top_k: int | None = Field(None, gt=0, description="Passages per retrieval step.")
    max_tokens: int | None = Field(None, gt=0, description="Completion token cap.")
    temperature: Temperature = 0.0
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

    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS)


MAX_INPUTS = 2048  # texts in one embeddings request (OpenAI's limit)


def _no_token_arrays(value: Any, field: str) -> Any:
    """OpenAI lets a prompt or input be token ids; Ragyard takes text (its engines tokenize themselves)."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, int | list) for v in items):
        raise unsupported(field, "token-id arrays; send text")
    return value


# Completions fields Ragyard does not implement: (the values that pass, why the others are refused).
REFUSED_COMPLETION_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "echo": ((None, False), "the prompt is not echoed"),
    "suffix": ((None, ""), "no configured model fills in the middle"),
    "best_of": ((None, 1), "one candidate per request"),
    "logit_bias": ((None, {}), "logit_bias is not implemented"),
}


class CompletionRequest(BaseModel):
    """OpenAI's (legacy) completions: the prompt as it is, continued by a model; no retrieval."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="'auto' or a configured model id.")
    prompt: str | list[str] = Field(description="The text to continue (a list of one text).")
    max_tokens: int = Field(16, gt=0)
    temperature: Temperature = 1.0
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Stop = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    user: str | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logit_bias: Any = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        _no_token_arrays(value, "prompt")
        if isinstance(value, list) and len(value) != 1:
            raise unsupported("prompt", "a batch of prompts; send one prompt per request")
        if (value if isinstance(value, str) else value[0] if isinstance(value, list) else None) == "":
            raise ValueError("the prompt is empty")
        return value  # anything else but text fails the field's own type check

    @field_validator(*REFUSED_COMPLETION_FIELDS)
    @classmethod
    def _refused(cls, value: Any, info: Any) -> Any:
        passes, why = REFUSED_COMPLETION_FIELDS[info.field_name]
        if value not in passes:
            raise unsupported(info.field_name, why)
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def stop_list(self) -> tuple[str, ...]:
        return stop_tuple(self.stop)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="The embedder's id (embedder.id) or 'auto'.")
    input: str | list[str] = Field(description="A text or a list of texts.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        _no_token_arrays(value, "input")
        if isinstance(value, list) and not 1 <= len(value) <= MAX_INPUTS:
            raise ValueError(f"input takes 1 to {MAX_INPUTS} texts")
        if any(v == "" for v in (value if isinstance(value, list) else [value])):
            raise ValueError("an input text is empty")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: a prompt, or chat messages as the model's chat template renders them."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("auto", min_length=1, description="A configured model id; 'auto': the first model.")
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give prompt or messages (one of them)")
        if self.messages is not None and not self.add_generation_prompt:
            raise unsupported("add_generation_prompt", "messages render with the assistant's opening")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("auto", min_length=1)
    tokens: list[int] = Field(max_length=1 << 17)


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ranker: Literal["auto", "default-2024-11-15"] | None = Field(
        None, description="Accepted for OpenAI's clients; the retriever's configured ranking is used."
    )
    score_threshold: float | None = Field(None, ge=0.0, le=1.0, description="Drop results scored below this.")


class VectorStoreSearchRequest(BaseModel):
    """OpenAI's vector store search: a query, how many results, and (not supported) filters."""

    model_config = ConfigDict(extra="forbid")

    query: str | list[str] = Field(description="The query (a list is joined with spaces).")
    max_num_results: int = Field(10, ge=1, le=50)
    rewrite_query: bool = False
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | list[str]) -> str | list[str]:
        if not (value if isinstance(value, str) else " ".join(value)).strip():
            raise ValueError("the query is empty")
        return value

    @field_validator("rewrite_query")
    @classmethod
    def _no_rewrite(cls, value: bool) -> bool:
        if value:
            raise unsupported("rewrite_query", "queries are searched as they are")
        return value

    @field_validator("filters")
    @classmethod
    def _no_filters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise unsupported("filters", "attribute filters are not implemented")
        return value

    def text(self) -> str:
        return (self.query if isinstance(self.query, str) else " ".join(self.query)).strip()

    def score_threshold(self) -> float:
        return (self.ranking_options.score_threshold or 0.0) if self.ranking_options else 0.0
