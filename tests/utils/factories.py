"""Small builders for test values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retrieval.documents import Chunk, Document, Passage

TEST_MODEL = "smollm2-135m-instruct"  # the smallest of the ladder: what a test answers with unless it says


def document(text: str = "Zorblat is the capital of Quux.", title: str = "Quux", doc_id: str = "") -> Document:
    return Document(id=doc_id, title=title, text=text)


def passage(text: str, title: str = "T", score: float = 0.5, doc_id: str = "d1", index: int = 0) -> Passage:
    return Passage(Chunk(index, doc_id, title, text, index, 0), score)


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def app_config(index_dir: Any = None, **sections: Any) -> Any:
    """An `AppConfig` for a test: SmolLM2 alone, no corpus indexed on start, the index in ``index_dir`` (when
    given); ``sections`` add or replace top-level sections (cache, sla, models, ...)."""
    from services.config import load_config

    base: dict[str, Any] = {"models": [{"id": TEST_MODEL}], "corpus": {"ingest_on_start": False}}
    if index_dir is not None:
        base["index"] = {"dir": str(index_dir)}
    return load_config({**base, **sections})


def rag_prompts(engine: Any, shared_data: Path, n: int) -> list[str]:
    """Question + top passages from the shared sets, as the workers see them."""
    from bench.harness import read_rows
    from retrieval.generation import ChatMessage

    prompts = []
    for name in ("dev_hotpotqa.jsonl", "dev_boolq.jsonl"):
        for row in read_rows(shared_data / name, n):
            passages = "\n".join(
                f"[{i + 1}] {c['title']}: {c['text'][:400]}" for i, c in enumerate(row["contexts"][:3])
            )
            messages = [
                ChatMessage(role="system", content="Answer the question from the passages."),
                ChatMessage(role="user", content=f"Passages:\n{passages}\n\nQuestion: {row['question']}"),
            ]
            prompts.append(engine.render_chat(messages))
    return prompts
