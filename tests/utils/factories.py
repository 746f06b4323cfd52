"""Small builders for test values."""

from __future__ import annotations

import numpy as np

from retrieval.documents import Chunk, Document, Passage


def document(text: str = "Zorblat is the capital of Quux.", title: str = "Quux", doc_id: str = "") -> Document:
    return Document(id=doc_id, title=title, text=text)


def passage(text: str, title: str = "T", score: float = 0.5, doc_id: str = "d1", index: int = 0) -> Passage:
    return Passage(Chunk(index, doc_id, title, text, index, 0), score)


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
