"""A scripted engine: the generation protocol (`retrieval.generation.Engine`) without a model, so the
answer pipeline, the policies' control flow and the HTTP edge can be tested fast and exactly. Its
"tokens" are whitespace-separated words; it records every prompt it was given; it can be told to fail
part-way through a stream, as an engine whose replica dies does.

A hashing embedder (`HashingEmbedder`) stands in for MiniLM where a test is about the edge, not about what
retrieval finds: it embeds a text as its hashed words, so it loads in no time and lexical neighbours are near.
FAISS, the router and the cache the tests run with stay real.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval import generation as gen


class EngineFailure(RuntimeError):
    """What the scripted engine raises when told to fail."""


@dataclass
class ScriptedEngine:
    """``reply``: the completion for a prompt (a fixed text, or a function of the prompt).
    ``fail_after``: raise EngineFailure after this many chunks of a stream (0: before the first).
    ``entropy``: the entropy DRAGIN reads for each generated word (default: 0, nothing uncertain).
    ``hold``: while this event is not set, a stream waits after its first chunk (a request kept open)."""

    reply: str | Callable[[str], str] = "a scripted answer"
    model_id: str = "scripted"
    max_model_len: int = 4096
    fail_after: int | None = None
    entropy: Callable[[str], float] = lambda word: 0.0
    prompts: list[str] = field(default_factory=list)
    closed: bool = False
    hold: threading.Event | None = None
    stopped: int = 0  # generations stopped before their end (their caller cancelled or closed them)
    logprob: float = -0.1  # each word's log-probability, when a request asks for them

    def render_chat(self, messages: list[gen.ChatMessage]) -> str:
        prompt = "".join(f"<{m.role}>\n{m.content}\n" for m in messages) + "<assistant>\n"
        prompt.encode("utf-8")  # as a real tokenizer does: text that is not valid Unicode is refused
        return prompt

    def count_tokens(self, text: str) -> int:
        text.encode("utf-8")
        return len(text.split())

    def _completion(self, prompt: str, params: gen.SamplingParams) -> tuple[list[str], gen.FinishReason]:
        prompt.encode("utf-8")  # as a real tokenizer does: text that is not valid Unicode is refused
        text = self.reply(prompt) if callable(self.reply) else self.reply
        for stop in params.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        words = text.split()
        if len(words) > params.max_tokens:
            return words[: params.max_tokens], "length"
        return words, "stop"

    async def stream(
        self, prompt: str, params: gen.SamplingParams, chunks: list[str] | None = None
    ) -> AsyncIterator[gen.GenerationChunk]:
        self.prompts.append(prompt)
        words, finish = self._completion(prompt, params)
        stats = gen.GenerationStats(prompt_tokens=self.count_tokens(prompt), completion_tokens=len(words))
        try:
            for i, word in enumerate(words):
                if self.fail_after is not None and i >= self.fail_after:
                    raise EngineFailure(f"scripted failure after {i} chunks")
                await asyncio.sleep(0)  # a real engine yields to the loop between tokens
                while i == 1 and self.hold is not None and not self.hold.is_set():
                    await asyncio.sleep(0.005)
                last = i == len(words) - 1
                piece = (" " if i else "") + word
                yield gen.GenerationChunk(
                    text=piece,
                    logprobs=[gen.TokenLogprob(piece, self.logprob)] if params.logprobs is not None else None,
                    finish_reason=finish if last else None,
                    stats=stats if last else None,
                    prompt_tokens=stats.prompt_tokens,
                    completion_tokens=i + 1,
                )
        except (asyncio.CancelledError, GeneratorExit):
            self.stopped += 1  # its caller went away mid-generation
            raise
        if not words:
            if self.fail_after is not None:
                raise EngineFailure("scripted failure before the first chunk")
            yield gen.GenerationChunk(text="", finish_reason=finish, stats=stats)

    async def generate(
        self, prompt: str, params: gen.SamplingParams, chunks: list[str] | None = None
    ) -> gen.GenerationResult:
        return await gen.collect(self.stream(prompt, params, chunks))

    async def generate_with_signals(self, prompt: str, params: gen.SamplingParams) -> gen.SignalResult:
        self.prompts.append(prompt)
        words, finish = self._completion(prompt, params)
        prompt_words = prompt.split()
        spaced = [(" " if i else "") + w for i, w in enumerate(words)]  # tokens join back into the text
        return gen.SignalResult(
            text="".join(spaced),
            finish_reason=finish,
            token_ids=list(range(len(words))),
            tokens=prompt_words + spaced,
            prompt_len=len(prompt_words),
            entropies=[self.entropy(w) for w in words],
            attention=None,
            stats=gen.GenerationStats(prompt_tokens=len(prompt_words), completion_tokens=len(words)),
        )

    def close(self) -> None:
        self.closed = True


def scripted_service(config: Any, embedder: Any, engine: ScriptedEngine, *, cache: Any = None) -> Any:
    """A RagService of the library path over ``config``'s first model answered by ``engine``, with ``embedder``
    (the real one or a `HashingEmbedder`) and a FAISS index in ``config.index.dir``."""
    from retrieval.retriever import Retriever
    from services.deployments.retriever import RetrieverService
    from services.deployments.worker import Worker
    from services.pipeline import RagService
    from services.pipeline.clients import local_retriever, local_worker

    model = config.models[0].id
    retriever = local_retriever(
        RetrieverService(config, retriever=Retriever.create(index_dir=config.index.dir, embedder=embedder))
    )
    return RagService(config, retriever, {model: local_worker(Worker(config, model, engine=engine))}, cache=cache)


def scripted_config(index_dir: Any, **sections: Any) -> Any:
    """The app config the scripted tests share (`tests.utils.factories.app_config` with its index in ``index_dir``)."""
    from tests.utils.factories import app_config

    return app_config(index_dir, **sections)


_WORD = re.compile(r"\w+|[^\w\s]")


def _bucket(word: str, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "big") % size


class _Encoding(dict[str, Any]):
    """What a Hugging Face tokenizer's call returns, as far as Ragyard reads it: ``["input_ids"]`` and
    ``.input_ids``."""

    @property
    def input_ids(self) -> Any:
        return self["input_ids"]


class WordTokenizer:
    """Words and punctuation marks as tokens (ids are stable hashes), called the way Ragyard calls a Hugging Face
    tokenizer (the chunker counts with it, `/v1/embeddings` reports its counts)."""

    vocab_size = 30522
    cls_id, sep_id = 101, 102

    def _ids(self, text: str, special: bool) -> list[int]:
        text.encode("utf-8")  # as a real tokenizer does: text that is not valid Unicode is refused
        ids = [1000 + _bucket(w.lower(), self.vocab_size - 1000) for w in _WORD.findall(text)]
        return [self.cls_id, *ids, self.sep_id] if special else ids

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, **_: Any) -> _Encoding:
        if isinstance(text, str):
            return _Encoding(input_ids=self._ids(text, add_special_tokens))
        return _Encoding(input_ids=[self._ids(t, add_special_tokens) for t in text])


@dataclass
class _Limits:
    max_seq_length: int = 256


class HashingEmbedder:
    """The embedder's interface (`retrieval.embedder.Embedder`) without a model: a text's vector is its
    lower-cased words hashed into ``dim`` signed buckets, L2-normalised, so texts sharing words are near and
    the same text always embeds the same. Its dimension is MiniLM's, so the router's classifier reads it."""

    def __init__(self, dim: int = 384, name: str = "hashing-embedder") -> None:
        self.dim, self.name = dim, name
        self.tokenizer = WordTokenizer()
        self.model = _Limits()
        self.encoded = 0  # texts embedded so far (tests read it to see that work was or was not done)

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            text.encode("utf-8")  # as the real embedder's tokenizer does: text that is not valid Unicode is refused
            words = [w.lower() for w in _WORD.findall(text) if w.isalnum() or w == "_"][: self.model.max_seq_length]
            for word in words or [text]:
                h = _bucket(word, 2 * self.dim)
                out[row, h % self.dim] += 1.0 if h < self.dim else -1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        self.encoded += len(texts)
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()
