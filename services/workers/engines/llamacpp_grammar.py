"""``response_format`` on the llama.cpp engine: llama.cpp's own grammar sampler over a GBNF grammar made
from the JSON schema by llama-cpp-python's converter (the port of llama.cpp's json-schema-to-grammar).

The engine samples in Python, so the grammar is used as a check and a mask: ``allows`` asks whether one
token may come next (one candidate through the sampler, cheap), ``mask`` sets every refused token's logit
to -inf (the whole vocabulary through it, done only when the first choice was refused), ``accept`` advances
the grammar's state. A schema the converter or llama.cpp's grammar parser cannot use is the client's
mistake (400), found before any token is generated.
"""

from __future__ import annotations

import ctypes
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.generation import ResponseFormat
from services.errors import InvalidRequestError

if TYPE_CHECKING:
    import torch

    from services.workers.engines.llamacpp_runtime import LlamaRuntime

# A grammar past this size is refused: the converter expands $refs and patterns, and a schema that fans
# out would make a grammar (and a per-token check) without bound.
MAX_GRAMMAR_CHARS = 200_000
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)


def grammar_text(fmt: ResponseFormat) -> str:
    """The GBNF grammar for a response_format (json_object: any JSON object)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema: dict[str, Any] = fmt.json_schema if fmt.type == "json_schema" and fmt.json_schema else {"type": "object"}
    try:
        text = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError as exc:
        raise InvalidRequestError(
            "response_format.json_schema nests or refers to itself too deeply", param="response_format"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the converter raises plain exceptions for schemas it cannot use
        raise InvalidRequestError(
            f"response_format.json_schema cannot be turned into a grammar: {exc}", param="response_format"
        ) from exc
    if len(text) > MAX_GRAMMAR_CHARS:
        raise InvalidRequestError(
            f"response_format.json_schema makes a grammar of {len(text)} characters (at most {MAX_GRAMMAR_CHARS})",
            param="response_format",
        )
    return text


class GrammarConstraint:
    """One request's grammar state over the engine's vocabulary."""

    def __init__(self, runtime: LlamaRuntime, fmt: ResponseFormat) -> None:
        self.lib: Any = runtime.lib
        self.n_vocab = runtime.n_vocab
        text = grammar_text(fmt)
        self._sampler = self.lib.llama_sampler_init_grammar(runtime.vocab, text.encode("utf-8"), b"root")
        if not self._sampler:
            raise InvalidRequestError(
                "llama.cpp's grammar parser refused the schema's grammar", param="response_format"
            )
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._all: np.ndarray | None = None

    def _apply(self, data: np.ndarray) -> None:
        arr = self.lib.llama_token_data_array(
            data=data.ctypes.data_as(ctypes.POINTER(self.lib.llama_token_data)),
            size=len(data),
            selected=-1,
            sorted=False,
        )
        self.lib.llama_sampler_apply(self._sampler, ctypes.byref(arr))

    def allows(self, token: int) -> bool:
        self._one["id"] = token
        self._one["logit"] = 0.0
        self._apply(self._one)
        return bool(np.isfinite(self._one["logit"][0]))

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        if self._all is None:
            self._all = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
            self._all["id"] = np.arange(self.n_vocab, dtype=np.int32)
        data = self._all
        data["logit"] = 0.0
        self._apply(data)
        refused = torch.from_numpy(~np.isfinite(data["logit"]))
        if bool(refused.all()):
            raise InvalidRequestError("response_format.json_schema admits no token here", param="response_format")
        return logits.float().masked_fill(refused, float("-inf"))

    def accept(self, token: int) -> None:
        self.lib.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self.lib.llama_sampler_free(self._sampler)
            self._sampler = None
