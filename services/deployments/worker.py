"""The model worker: one engine, chat rendering, and limits. A plain class; Serve wraps it."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import (
    Any,
    NotRequired,  # FastAPI reads a route's TypedDict on Python 3.11
)

from typing_extensions import TypedDict

from core.chunks import PromptChunk
from retrieval.generation import (
    ChatMessage,
    Engine,
    GenerationChunk,
    GenerationResult,
    Precompute,
    SamplingParams,
    SignalResult,
)
from services.config import ConfigSource, load_config
from services.errors import InvalidRequestError
from services.workers.registry import build_engine

logger = logging.getLogger(__name__)


class Tokens(TypedDict):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: NotRequired[list[str]]  # left out unless asked for


class Detokenized(TypedDict):
    prompt: str


class Worker:
    def __init__(self, config: ConfigSource, model_id: str | None = None, *, engine: Engine | None = None) -> None:
        self.config = load_config(config)
        self.model_config = self.config.model(model_id) if model_id else self.config.default_model
        if engine is None and self.model_config.torch_threads is None and self.model_config.device == "cpu":
            # Ray sets OMP_NUM_THREADS to the actor's CPU share (often 1); decode wants every core.
            import torch

            torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.engine = engine or build_engine(self.model_config, self.config.cache_dir)

    def check(self, params: SamplingParams) -> None:
        if params.max_tokens > self.model_config.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens {params.max_tokens} is over this model's limit of {self.model_config.max_tokens_limit}",
                param="max_tokens",
            )

    def check_health(self) -> None:
        """Serve's health check: raises when the engine can no longer answer (closed, or its own check
        fails), and Serve replaces the replica."""
        if getattr(self.engine, "closed", False):
            raise RuntimeError(f"the {self.model_config.id} engine is closed")
        check = getattr(self.engine, "check_health", None)
        if callable(check):
            check()

    def ready(self) -> dict[str, Any]:
        spec = getattr(self.engine, "spec", None)
        reuse = getattr(self.engine, "chunk_reuse", None)
        return {
            "model": self.model_config.id,
            "engine": self.model_config.engine,
            "speculative": spec.describe() if spec is not None else None,
            "chunk_cache": reuse.describe() if reuse is not None else None,
            "ready": True,
        }

    def metrics_text(self, include_engine: bool = True) -> str:
        """Prometheus families the gateway's registry does not hold: the engine's own (vLLM's, unless
        ``include_engine`` is False: in one process they are in the default registry already) and the
        chunk-KV cache's."""
        parts = []
        engine_metrics = getattr(self.engine, "metrics_text", None)
        if include_engine and engine_metrics is not None:
            parts.append(engine_metrics())
        if getattr(self.engine, "chunk_reuse", None) is not None:
            from cache.chunk_kv import metrics_text

            parts.append(metrics_text())
        return "".join(parts)

    def precompute(self, chunks: list[PromptChunk]) -> Precompute:
        """Queue chunks for the engine to compute their KV in the background (llamacpp); returns at once.
        Engines without ahead-of-time chunk KV say so and do nothing."""
        precompute = getattr(self.engine, "precompute", None)
        if precompute is None:
            return {"queued": 0, "enabled": False}
        result: Precompute = precompute(chunks)
        return result

    def prompt(self, messages: list[ChatMessage] | str, assistant_prefix: str = "") -> str:
        """The chat template's prompt; ``assistant_prefix`` is text the answer continues from. A string is
        a raw prompt (the completions API): the model continues it as it is."""
        if isinstance(messages, str):
            return messages + assistant_prefix
        return self.engine.render_chat(messages) + assistant_prefix

    def tokenize(self, text: str | list[ChatMessage], add_special_tokens: bool = True) -> Tokens:
        """Token ids of a text, or of messages as the chat template renders them (with the assistant's
        opening, as a chat request's prompt has it)."""
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            raise InvalidRequestError("this model's engine has no tokenizer to show", param="model")
        prompt = text if isinstance(text, str) else self.engine.render_chat(text)
        ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens and isinstance(text, str)).input_ids)
        return {
            "count": len(ids),
            "max_model_len": self.engine.max_model_len,
            "tokens": ids,
            "token_strs": [str(t) for t in tokenizer.convert_ids_to_tokens(ids)],
        }

    def detokenize(self, tokens: list[int]) -> Detokenized:
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            raise InvalidRequestError("this model's engine has no tokenizer to show", param="model")
        size = len(tokenizer)
        bad = [t for t in tokens if not 0 <= t < size]
        if bad:
            raise InvalidRequestError(
                f"token ids out of this model's vocabulary (0..{size - 1}): {bad[:5]}", param="tokens"
            )
        return {"prompt": str(tokenizer.decode(tokens))}

    async def generate(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[PromptChunk] | None = None,
    ) -> GenerationResult:
        """``chunks``: the retrieved texts inside the messages (the chunk-KV cache reuses their KV)."""
        self.check(params)
        return await self.engine.generate(self.prompt(messages, assistant_prefix), params, chunks)

    async def stream(
        self,
        messages: list[ChatMessage] | str,
        params: SamplingParams,
        assistant_prefix: str = "",
        chunks: list[PromptChunk] | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        self.check(params)
        async for chunk in self.engine.stream(self.prompt(messages, assistant_prefix), params, chunks):
            yield chunk

    async def generate_with_signals(
        self, messages: list[ChatMessage], params: SamplingParams, assistant_prefix: str = ""
    ) -> SignalResult:
        self.check(params)
        return await self.engine.generate_with_signals(self.prompt(messages, assistant_prefix), params)
