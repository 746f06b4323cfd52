"""One llama.cpp model and context, at the level the engine needs: batches at chosen positions in chosen
sequences, the logits of the rows asked for, and the per-sequence KV operations (remove, copy, shift,
save, restore) that chunk-KV reuse is built from.

llama-cpp-python's ``Llama`` class drives one sequence with its own sampling loop; Ragyard needs several
sequences in one unified KV buffer (one per request in flight, one scratch for chunk states), logits of
drafted rows for speculation, and the raw state calls, so this wraps the library's low-level bindings
(``llama_cpp.llama_cpp``) and its model/context holders (``llama_cpp._internals``, pinned with the package).
Not thread-safe: the engine calls it under its step lock.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.errors import ConfigError, InvalidRequestError

logger = logging.getLogger(__name__)


class LlamaRuntimeError(RuntimeError):
    """llama.cpp refused a call the engine made (a decode or a state restore)."""


def closed_at_exit(what: str) -> weakref.WeakSet[Any]:
    """A set to add open objects to: those still open when the interpreter exits are closed (``close()``) before
    it tears itself down. Left to the garbage collector then, llama-cpp-python's finalizers run in no set order
    within one garbage cycle, and a model freed before the context built on it is a segfault after everything
    else has finished (a CI run ended so, its tests all passed). Hooks run last in, first out: a set made later
    (the engines', whose threads must stop first) is closed before one made earlier (the runtimes')."""
    members: weakref.WeakSet[Any] = weakref.WeakSet()

    def close_all() -> None:
        for member in list(members):
            try:
                member.close()
            except Exception:  # noqa: BLE001 - at exit: close the rest whatever one of them does
                logger.exception("closing %s at exit failed", what)

    atexit.register(close_all)
    return members


# `close` frees the context first, then the model.
_OPEN = closed_at_exit("a llama.cpp runtime")


class LlamaRuntime:
    def __init__(
        self, gguf: Path, *, n_ctx: int, n_seq: int, threads: int, n_batch: int = 512, verbose: bool = False
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals, _logger

        # llama.cpp logs every load and graph detail to stderr unless its callback's logger says otherwise.
        _logger.set_verbose(verbose)
        self.lib: Any = llama_cpp
        self.path = gguf
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        try:
            self._model = _internals.LlamaModel(path_model=str(gguf), params=model_params, verbose=verbose)
        except (ValueError, RuntimeError) as exc:
            # llama.cpp returns no model for an architecture it does not know or a file it cannot read.
            raise ConfigError(f"llama.cpp cannot load {gguf}: {exc} (architecture {_architecture(gguf)!r})") from exc
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.n_seq_max = n_seq
        # One KV buffer for every sequence: a request's cells and a restored chunk's share it, so seq_cp
        # moves a chunk into a prompt without copying its KV.
        ctx_params.kv_unified = True
        ctx_params.no_perf = True
        try:
            self._ctx = _internals.LlamaContext(model=self._model, params=ctx_params, verbose=verbose)
        except (ValueError, RuntimeError) as exc:
            self._model.close()
            raise ConfigError(f"llama.cpp cannot make a context for {gguf}: {exc}") from exc
        self.model = self._model.model
        self.ctx = self._ctx.ctx
        _OPEN.add(self)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ctx))
        self.n_batch = n_batch
        self.n_seq = n_seq
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.metadata: dict[str, str] = self._model.metadata()
        self.eog_ids = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)}
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.closed = False
        self._pieces: dict[tuple[int, bool], bytes] = {}

    # -- facts ------------------------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "unknown")

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "n_layer": int(self.lib.llama_model_n_layer(self.model)),
            "n_head_kv": int(self.lib.llama_model_n_head_kv(self.model)),
            "n_embd": int(self.lib.llama_model_n_embd(self.model)),
            "n_vocab": self.n_vocab,
            "file_type": self.metadata.get("general.file_type"),
        }

    def fingerprint(self, model_id: str) -> str:
        """Names the weights, the llama.cpp build (its state layout) and the KV layout: a chunk state
        saved under another of these never matches."""
        facts = {
            "engine": "llamacpp",
            "llama_cpp_python": getattr(self.lib, "__version__", "?"),
            "id": model_id,
            "size": self.path.stat().st_size,
            "name": self.metadata.get("general.name"),
            **self.describe(),
        }
        return hashlib.sha256(repr(sorted(facts.items())).encode("utf-8")).hexdigest()[:16]

    # -- text -------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text`` (no BOS added); ``special`` parses control tokens like <|im_start|>."""
        self._open()
        data = text.encode("utf-8", errors="strict")
        n_max = len(data) + 8
        buf = (self.lib.llama_token * n_max)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, special)
        if n < 0:
            n_max = -n
            buf = (self.lib.llama_token * n_max)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, special)
        if n < 0:
            raise InvalidRequestError("the text cannot be tokenized", param="messages")
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = True) -> bytes:
        """A token's bytes (cached); ``special=False`` renders control tokens (<|im_end|>) as nothing."""
        key = (token, special)
        found = self._pieces.get(key)
        if found is None:
            self._open()
            buf = ctypes.create_string_buffer(64)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self.lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            found = self._pieces[key] = buf.raw[: max(0, n)]
        return found

    def detokenize(self, ids: list[int], *, special: bool = False) -> str:
        return b"".join(self.piece(t, special=special) for t in ids).decode("utf-8", errors="replace")

    # -- the model --------------------------------------------------------------------------------

    def _row(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def decode(self, seq: int, tokens: list[int], start: int, *, rows: str = "last") -> np.ndarray:
        """Run ``tokens`` at positions ``start ..`` in sequence ``seq``; returns the logits of the last
        token (vocab,) or, with ``rows="all"``, of every token (n, vocab). Split into n_batch pieces."""
        self._open()
        if not tokens:
            raise ValueError("nothing to decode")
        out: list[np.ndarray] = []
        for at in range(0, len(tokens), self.n_batch):
            piece = tokens[at : at + self.n_batch]
            final = at + len(piece) == len(tokens)
            want_all = rows == "all"
            b = self._batch
            for i, tok in enumerate(piece):
                self._row(i, tok, start + at + i, seq, want_all or (final and i == len(piece) - 1))
            b.n_tokens = len(piece)
            rc = self.lib.llama_decode(self.ctx, b)
            if rc != 0:
                raise LlamaRuntimeError(f"llama_decode returned {rc} (sequence {seq}, positions from {start + at})")
            if want_all:
                ptr = self.lib.llama_get_logits(self.ctx)
                out.append(np.ctypeslib.as_array(ptr, shape=(len(piece), self.n_vocab)).copy())
            elif final:
                ptr = self.lib.llama_get_logits_ith(self.ctx, -1)
                out.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        return np.concatenate(out) if rows == "all" else out[-1]

    def decode_runs(self, runs: Sequence[tuple[int, list[int], int]]) -> None:
        """Run several sequences' tokens in one batch, no logits kept: ``(sequence, tokens, first position)``
        each, every sequence's tokens following its last position, all together within ``n_batch``."""
        self._open()
        total = sum(len(tokens) for _, tokens, _ in runs)
        if not runs or total > self.n_batch:
            raise ValueError(f"a batch of {total} tokens (1 to {self.n_batch})")
        b = self._batch
        i = 0
        for seq, tokens, start in runs:
            for k, tok in enumerate(tokens):
                self._row(i, tok, start + k, seq, False)
                i += 1
        b.n_tokens = i
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise LlamaRuntimeError(f"llama_decode returned {rc} (a batch of {len(runs)} sequences)")

    # -- sequences --------------------------------------------------------------------------------

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self.lib.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Shift positions [p0, p1) by ``delta``; llama.cpp re-rotates the keys' RoPE on the next decode."""
        if delta:
            self.lib.llama_memory_seq_add(self.memory, seq, p0, p1, delta)

    def pos_range(self, seq: int) -> tuple[int, int]:
        """(lowest, highest) position the sequence holds; (-1, -1) when empty."""
        return (
            int(self.lib.llama_memory_seq_pos_min(self.memory, seq)),
            int(self.lib.llama_memory_seq_pos_max(self.memory, seq)),
        )

    def save(self, seq: int) -> bytes:
        size = int(self.lib.llama_state_seq_get_size(self.ctx, seq))
        buf = (ctypes.c_uint8 * size)()
        n = int(self.lib.llama_state_seq_get_data(self.ctx, buf, size, seq))
        if n <= 0:
            raise LlamaRuntimeError(f"llama_state_seq_get_data saved nothing for sequence {seq}")
        return bytes(buf)[:n]

    def restore(self, seq: int, blob: bytes) -> bool:
        """Load a saved state into ``seq`` (its cells replaced); False when llama.cpp refuses the blob."""
        buf = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
        n = int(self.lib.llama_state_seq_set_data(self.ctx, buf, len(blob), seq))
        if n == 0:
            self.seq_rm(seq)
            return False
        return True

    def _open(self) -> None:
        # Every call past close would read freed llama.cpp memory: a crash, not an exception.
        if self.closed:
            raise LlamaRuntimeError("the llama.cpp model is closed")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._batch is not None:
            self.lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self._model.close()


class _Encoded:
    def __init__(self, ids: list[int]) -> None:
        self.input_ids = ids

    def __getitem__(self, key: str) -> list[int]:
        if key != "input_ids":
            raise KeyError(key)
        return self.input_ids


class LlamaTokenizer:
    """The slice of a HF tokenizer's surface that Ragyard's shared code calls (encode, decode, token
    texts, vocabulary size), answered by the GGUF's own tokenizer through llama.cpp."""

    def __init__(self, runtime: LlamaRuntime) -> None:
        self.runtime = runtime

    def __call__(self, text: str, add_special_tokens: bool = False, **_: Any) -> _Encoded:
        return _Encoded(self.runtime.tokenize(text))

    def __len__(self) -> int:
        return self.runtime.n_vocab

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.runtime.detokenize(list(ids), special=not skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.runtime.piece(int(t)).decode("utf-8", errors="replace") for t in ids]


def _architecture(path: Path) -> str:
    """The GGUF's general.architecture, read with the gguf package (for the error message only)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.architecture")
        if field is None:
            return "none"
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - any reader failure just leaves the name out of the message
        return "unreadable"
