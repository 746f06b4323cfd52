"""Stored chunk KV as an engine's opaque per-sequence state (llama.cpp's ``llama_state_seq_get_data``).

The llama.cpp engine cannot hand its KV out as tensors, but it can save one sequence's cells (positions,
keys, values, in its own layout) and restore them into another sequence. An entry is that blob for one
chunk's tokens, computed once after the engine's canonical passage prefix, with the position its first
token had (``base``) so a prompt can shift it to where the chunk sits.

The blob's layout belongs to the llama.cpp build that wrote it, so the model fingerprint an entry is keyed
by names the engine and its version; on the wire the entry carries its key, that fingerprint, its token ids
and a BLAKE2b digest of the blob, and a blob that fails any check is dropped and recomputed, never restored.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from cache.chunk_kv import CorruptEntryError

FORMAT = "ragyard-chunk-state/1"
_HEADER = struct.Struct("<Q")
_MAX_HEADER = 1 << 24


@dataclass
class ChunkState:
    """One chunk's saved sequence state: ``blob`` holds the KV of ``token_ids`` at positions
    ``base .. base + len(token_ids) - 1``."""

    key: str
    model: str
    token_ids: list[int]
    base: int
    blob: bytes
    compute_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return len(self.blob)


def _digest(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class StateCodec:
    """Frames a ChunkState for a byte store: an 8-byte header length, a JSON header, the blob."""

    def encode(self, entry: ChunkState) -> bytes:
        header = json.dumps(
            {
                "format": FORMAT,
                "key": entry.key,
                "model": entry.model,
                "token_ids": entry.token_ids,
                "base": entry.base,
                "compute_s": entry.compute_s,
                "size": len(entry.blob),
                "digest": _digest(entry.blob),
            }
        ).encode("utf-8")
        return _HEADER.pack(len(header)) + header + entry.blob

    def decode(self, blob: bytes, *, key: str, model: str, token_ids: list[int]) -> ChunkState:
        if len(blob) < _HEADER.size:
            raise CorruptEntryError("truncated header")
        (size,) = _HEADER.unpack_from(blob)
        if size > len(blob) - _HEADER.size or size > _MAX_HEADER:
            raise CorruptEntryError("bad header length")
        try:
            meta = json.loads(blob[_HEADER.size : _HEADER.size + size])
        except ValueError as exc:
            raise CorruptEntryError(f"header is not JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptEntryError("not a chunk state")
        if meta.get("key") != key or meta.get("model") != model:
            raise CorruptEntryError("entry belongs to another key or model")
        if meta.get("token_ids") != token_ids:
            raise CorruptEntryError("token ids differ")
        body = blob[_HEADER.size + size :]
        if meta.get("size") != len(body) or meta.get("digest") != _digest(body):
            raise CorruptEntryError("digest mismatch")
        try:
            base, compute_s = int(meta["base"]), float(meta.get("compute_s", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptEntryError(f"bad metadata: {exc}") from exc
        return ChunkState(key, model, list(token_ids), base, bytes(body), compute_s)
