"""What a retrieval policy asks of a language model: messages, sampling, results and the per-token
signals DRAGIN reads, and the ``Engine`` protocol every model engine implements.

The policies consume these types, so they are defined here, on the consumer's side; engines
(``services.workers.engines``) implement the protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from typing_extensions import TypedDict  # pydantic and FastAPI read it on Python 3.11

from core.chunks import PromptChunk

FinishReason = Literal["stop", "length"]

# A temperature below this is greedy decoding (vLLM's rule, its _SAMPLING_EPS): dividing logits by a temperature
# close enough to zero overflows to inf and the softmax to NaN.
TEMPERATURE_FLOOR = 1e-5


def _floor_temperature(value: float) -> float:
    return 0.0 if value < TEMPERATURE_FLOOR else value


# OpenAI's range, 0 to 2; below TEMPERATURE_FLOOR it is 0 (greedy). Every request body and SamplingParams use it.
Temperature = Annotated[float, Field(ge=0.0, le=2.0), AfterValidator(_floor_temperature)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ResponseFormat(BaseModel):
    """A structured-output constraint on the final answer: any JSON object, or JSON valid under a schema."""

    model_config = ConfigDict(frozen=True)

    type: Literal["json_object", "json_schema"]
    json_schema: dict[str, Any] | None = Field(None, description="The JSON Schema (type json_schema).")

    def violation(self, text: str) -> str | None:
        """Why ``text`` does not meet this format (not JSON, not an object, or not valid under the schema), or
        None when it does."""
        import json

        from jsonschema import Draft202012Validator

        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"the answer is not JSON ({exc})"
        if self.type == "json_object" and not isinstance(value, dict):
            return "the answer is not a JSON object"
        if self.json_schema is not None:
            error = next(iter(Draft202012Validator(self.json_schema).iter_errors(value)), None)
            if error is not None:
                return f"the answer is not valid under the schema: {error.message}"
        return None


@dataclass
class TokenLogprob:
    """One generated token's log-probability and its most likely alternatives (OpenAI's ``logprobs``)."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)

    def openai(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "logprob": self.logprob,
            "bytes": list(self.token.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in self.top],
        }


MAX_TOP_LOGPROBS = 20


class SamplingParams(BaseModel):
    """How to pick tokens. temperature 0 (or below TEMPERATURE_FLOOR) is greedy, and then deterministic."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int = Field(256, gt=0)
    temperature: Temperature = 0.0
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The plan's switches: off turns the worker's draft pair / chunk-KV reuse off for this request.
    speculative: bool = True
    chunk_cache: bool = True
    # The SLA tier's priority: the torch engine runs waiting steps of higher priority first.
    priority: int = Field(0, ge=0, le=100)
    # OpenAI's penalties over the tokens generated so far: logit -= count * frequency + (count > 0) * presence.
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # None: no log-probabilities; n: each token's, with its n most likely alternatives.
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    # The caller's request id (X-Request-Id); engines that name their requests (vLLM) use it.
    request_id: str | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    @property
    def shapes_output(self) -> bool:
        """The final answer must come from one call under these params (a constraint or its logprobs)."""
        return self.response_format is not None or self.logprobs is not None

    def plain(self) -> SamplingParams:
        """These params for a policy's intermediate calls: no output constraint, no logprobs."""
        if not self.shapes_output:
            return self
        return self.model_copy(update={"response_format": None, "logprobs": None})


@dataclass
class GenerationChunk:
    """One streamed piece: new text, and on the last chunk the finish reason and the stats.
    ``prompt_tokens`` and ``completion_tokens``: what the call has run so far (0: the engine does not
    say), so a stream that breaks off is still charged what it used."""

    text: str
    finish_reason: FinishReason | None = None
    stats: GenerationStats | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The tokens behind ``text``, when the params asked for logprobs.
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0
    queue_s: float = 0.0
    # Speculative decoding's figures (drafter, K, drafted, accepted, mean accepted length) when it ran.
    speculative: dict[str, Any] | None = None
    # Chunk-KV reuse's figures (hits per tier, tokens reused and recomputed, bytes) when it ran.
    chunk_cache: dict[str, Any] | None = None
    # Prompt tokens whose KV came from the engine's prefix cache (vLLM), when it says.
    cached_prompt_tokens: int | None = None
    # The first token's id (the torch engine reports it; benchmarks compare first tokens across modes).
    first_token: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason
    stats: GenerationStats = field(default_factory=GenerationStats)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class SignalResult:
    """A completion with the per-token signals DRAGIN reads.

    ``entropies[i]`` is the entropy (nats) of the distribution token i was drawn from.
    ``attention`` (None when the engine cannot expose it) has one row per generated token over every
    position of prompt plus completion: last layer, averaged over heads. ``tokens`` holds the text of
    every position (prompt first, then completion), ``prompt_len`` where the completion starts.
    """

    text: str
    finish_reason: FinishReason
    token_ids: list[int]
    tokens: list[str]
    prompt_len: int
    entropies: list[float]
    attention: Any = None
    stats: GenerationStats = field(default_factory=GenerationStats)


class Precompute(TypedDict):
    """What a worker did with chunk texts handed to it for ahead-of-time KV: how many it queued (it computes
    them in the background), and whether its engine computes chunk KV ahead at all."""

    queued: int
    enabled: bool


class Engine(Protocol):
    """What the worker needs from a model engine."""

    model_id: str
    max_model_len: int

    def render_chat(self, messages: list[ChatMessage]) -> str:
        """The prompt text the model's chat template makes of these messages."""

    def count_tokens(self, text: str) -> int:
        """Model tokens in ``text`` (no special tokens added)."""

    def stream(
        self, prompt: str, params: SamplingParams, chunks: list[PromptChunk] | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """Stream the completion of ``prompt``; the last chunk carries finish reason and stats.
        ``chunks``: retrieved texts inside the prompt (engines with a chunk-KV cache reuse their KV)."""

    async def generate(
        self, prompt: str, params: SamplingParams, chunks: list[PromptChunk] | None = None
    ) -> GenerationResult:
        """The whole completion at once."""

    async def generate_with_signals(self, prompt: str, params: SamplingParams) -> SignalResult:
        """The completion plus per-token entropies and (where the engine can) attentions."""

    def close(self) -> None:
        """Free the model."""


async def collect(chunks: AsyncIterator[GenerationChunk]) -> GenerationResult:
    """Drain a stream into one result (engines use it for ``generate``)."""
    parts: list[str] = []
    finish: FinishReason = "length"
    stats = GenerationStats()
    logprobs: list[TokenLogprob] | None = None
    async for chunk in chunks:
        parts.append(chunk.text)
        if chunk.logprobs is not None:
            logprobs = (logprobs or []) + chunk.logprobs
        if chunk.finish_reason is not None:
            finish = chunk.finish_reason
        if chunk.stats is not None:
            stats = chunk.stats
    return GenerationResult(text="".join(parts), finish_reason=finish, stats=stats, logprobs=logprobs)
