"""Small builders for test values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.documents import Chunk, Document, Passage
from retrieval.generation import ChatMessage, SamplingParams

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


# Schema forms the edge's schema budget accepts (services/http/schema_budget.py), each with a request that fits
# it: the engine tests check that both CPU engines honour every one of them (valid JSON under the schema).
SCHEMA_FORMS: dict[str, tuple[dict[str, Any], str]] = {
    "object": (
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
            "required": ["city", "population"],
            "additionalProperties": False,
        },
        "Give the capital of France and its population as JSON.",
    ),
    "enum": (
        {
            "type": "object",
            "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
            "required": ["colour"],
        },  # fmt: skip
        "What colour is grass? Answer as JSON.",
    ),
    "array": (
        {
            "type": "object",
            "properties": {"fruits": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}},
            "required": ["fruits"],
        },
        "Name up to three fruits as JSON.",
    ),
    "optional": (
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
            "required": ["name", "nickname"],
        },
        "Give a person's name and nickname (or null) as JSON.",
    ),
    "ref": (
        {
            "$defs": {
                "point": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                    "required": ["x", "y"],
                }
            },
            "type": "object",
            "properties": {"start": {"$ref": "#/$defs/point"}},
            "required": ["start"],
        },  # fmt: skip
        "Give a point with integer x and y as JSON.",
    ),
    "pattern": (
        {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["code"]},
        "Give a three-letter airport code as JSON.",
    ),
    "bounded": (
        {
            "type": "object",
            "properties": {
                "word": {"type": "string", "maxLength": 12},
                "ok": {"type": "boolean"},
                "score": {"type": "number"},
            },
            "required": ["word", "ok", "score"],
        },  # fmt: skip
        "Give a word, a yes/no and a score as JSON.",
    ),
}


def honours_every_schema_form(engine: Any) -> dict[str, str]:
    """Each form the edge accepts (tests/utils/factories.py SCHEMA_FORMS), as the engine is given it (references
    followed): an answer that ends is valid JSON under the schema. Returns each form's finish reason."""
    from jsonschema import validate

    from services.http.schema_budget import dereference

    finishes = {}
    for name, (schema, ask) in SCHEMA_FORMS.items():
        given = dereference(schema)
        fmt = {"type": "json_schema", "json_schema": given}
        prompt = str(engine.render_chat([ChatMessage(role="user", content=ask)]))
        result = engine.generate_sync(prompt, SamplingParams(max_tokens=48, response_format=fmt))
        finishes[name] = result.finish_reason
        if result.finish_reason == "stop":
            validate(json.loads(result.text), schema)  # the form as the client wrote it
    return finishes
