"""Stored per-chunk KV and its tiers: worker memory first, then a shared backend (Redis).

An entry is the KV a chunk's tokens produce, computed alone after the shared system prefix, for one
model. Its key hashes the model fingerprint, the prefix's token ids and the chunk's token ids, so a
different model, tokenizer, prompt prefix or chunk text can never hit it.

On the wire an entry is a safetensors blob (keys and values with their dtype and shape) whose metadata
holds the key, the model fingerprint, the token ids, the base position and a BLAKE2b digest of the tensor
bytes. A blob that fails to parse, names another key, model or token ids, has the wrong shape or dtype,
or whose digest does not match is dropped from the backend and counted as corrupt; the chunk is then
recomputed. A failing backend never fails a request: it counts as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import CollectorRegistry, generate_latest

from cache.errors import CacheError
from cache.eviction import ByteBoundedCache, EvictionPolicy
from core.metrics import counter, gauge

if TYPE_CHECKING:
    import torch

    from cache.base import KVBackend

logger = logging.getLogger(__name__)

FORMAT = "ragyard-chunk-kv/1"
KEY_PREFIX = "ckv:v1:"

Tier = Literal["memory", "redis", "miss"]

# A registry of its own: a worker replica serves these through the gateway's /metrics.
REGISTRY = CollectorRegistry(auto_describe=True)
LOOKUPS = counter(
    "ragyard_chunk_kv_lookups_total",
    "Chunk-KV lookups by model, tier and result (hit, miss, corrupt, error).",
    ["model", "tier", "result"],
    registry=REGISTRY,
)
BYTES = counter(
    "ragyard_chunk_kv_bytes_total",
    "Chunk-KV bytes moved by model, tier and direction (read, write).",
    ["model", "tier", "direction"],
    registry=REGISTRY,
)
TOKENS = counter(
    "ragyard_chunk_kv_tokens_total",
    "Prompt tokens by model and how prefill got their KV: reused (stored), recomputed (stored but recomputed), "
    "computed (no entry: misses, separators, the question).",
    ["model", "kind"],
    registry=REGISTRY,
)
EVICTIONS = counter(
    "ragyard_chunk_kv_evictions_total", "Entries evicted from the memory tier.", ["model", "policy"], registry=REGISTRY
)
MEMORY_BYTES = gauge(
    "ragyard_chunk_kv_memory_bytes", "Bytes held by the memory tier, by model.", ["model"], registry=REGISTRY
)


class ChunkMetrics:
    """The chunk-KV families bound to one model (its id the ``model`` label): the store and the engine's reuse
    path count through it, so two models' series never collide where the gateway merges the workers'
    expositions, and no caller names a family."""

    def __init__(self, model: str) -> None:
        self.model = model

    def lookup(self, tier: str, result: str) -> None:
        LOOKUPS.labels(self.model, tier, result).inc()

    def moved(self, tier: str, direction: str, nbytes: int) -> None:
        BYTES.labels(self.model, tier, direction).inc(nbytes)

    def tokens(self, kind: str, count: int) -> None:
        TOKENS.labels(self.model, kind).inc(count)

    def evicted(self, policy: str, count: int) -> None:
        EVICTIONS.labels(self.model, policy).inc(count)

    def held(self, nbytes: int) -> None:
        MEMORY_BYTES.labels(self.model).set(nbytes)


def metrics_text() -> str:
    return generate_latest(REGISTRY).decode("utf-8")


def chunk_key(model_fingerprint: str, prefix_ids: list[int], chunk_ids: list[int], *, namespace: str) -> str:
    """An entry's key: the model, the tokens before the chunk and the chunk's own, and the namespace of the
    document the chunk came from ("" for a prompt's prefix), so no tenant's request meets another's entry."""
    h = hashlib.sha256()
    h.update(model_fingerprint.encode("utf-8"))
    h.update(b"\x00namespace\x00" + namespace.encode("utf-8"))
    h.update(b"\x00prefix\x00" + struct.pack(f"<{len(prefix_ids)}q", *prefix_ids))
    h.update(b"\x00chunk\x00" + struct.pack(f"<{len(chunk_ids)}q", *chunk_ids))
    return KEY_PREFIX + h.hexdigest()


def model_fingerprint(model_id: str, model_config: Any, dtype: str) -> str:
    """Names the weights' shape and dtype: entries of another model or dtype never match."""
    blob = json.dumps(
        {"id": model_id, "dtype": dtype, "config": model_config.to_dict() if model_config is not None else {}},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass
class ChunkKV:
    """One chunk's KV: ``keys``/``values`` are (layers, kv_heads, tokens, head_dim) with RoPE at
    positions ``base .. base + tokens - 1``."""

    key: str
    model: str
    token_ids: list[int]
    base: int
    keys: torch.Tensor
    values: torch.Tensor
    compute_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size())


def _digest(*tensors: torch.Tensor) -> str:
    import torch

    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        # Raw bytes via uint8, so dtypes numpy lacks (bfloat16) hash too.
        h.update(t.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def serialize(entry: ChunkKV) -> bytes:
    from safetensors.torch import save

    keys, values = entry.keys.detach().contiguous().cpu(), entry.values.detach().contiguous().cpu()
    meta = {
        "format": FORMAT,
        "key": entry.key,
        "model": entry.model,
        "token_ids": json.dumps(entry.token_ids),
        "base": str(entry.base),
        "compute_s": repr(entry.compute_s),
        "digest": _digest(keys, values),
    }
    return bytes(save({"keys": keys, "values": values}, metadata=meta))


class CorruptEntryError(CacheError):
    """A stored blob that must not be used."""


def _metadata(blob: bytes) -> dict[str, str]:
    # safetensors' layout: an 8-byte little-endian header length, then the JSON header.
    if len(blob) < 8:
        raise CorruptEntryError("truncated header")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8 or size > 1 << 24:
        raise CorruptEntryError("bad header length")
    try:
        header = json.loads(blob[8 : 8 + size])
    except ValueError as exc:
        raise CorruptEntryError(f"header is not JSON: {exc}") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CorruptEntryError("no metadata")
    return meta


def deserialize(
    blob: bytes, *, key: str, model: str, token_ids: list[int], shape: tuple[int, int, int], dtype: Any
) -> ChunkKV:
    """The entry in ``blob``, checked against what the caller expects; CorruptEntryError otherwise.

    ``shape`` is (layers, kv_heads, head_dim); the token count comes from ``token_ids``."""
    from safetensors.torch import load

    meta = _metadata(blob)
    if meta.get("format") != FORMAT:
        raise CorruptEntryError(f"format {meta.get('format')!r}")
    if meta.get("key") != key or meta.get("model") != model:
        raise CorruptEntryError("entry belongs to another key or model")
    try:
        stored_ids = json.loads(meta["token_ids"])
        base = int(meta["base"])
        compute_s = float(meta.get("compute_s", "0"))
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptEntryError(f"bad metadata: {exc}") from exc
    if stored_ids != token_ids:
        raise CorruptEntryError("token ids differ")
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError (not exported) on bad bytes
        raise CorruptEntryError(f"tensors do not parse: {exc}") from exc
    keys, values = tensors.get("keys"), tensors.get("values")
    layers, heads, head_dim = shape
    want = (layers, heads, len(token_ids), head_dim)
    if keys is None or values is None or tuple(keys.shape) != want or tuple(values.shape) != want:
        raise CorruptEntryError(f"shape differs from {want}")
    if keys.dtype != dtype or values.dtype != dtype:
        raise CorruptEntryError(f"dtype {keys.dtype} is not {dtype}")
    if _digest(keys, values) != meta.get("digest"):
        raise CorruptEntryError("digest mismatch")
    return ChunkKV(key, model, stored_ids, base, keys, values, compute_s)


@dataclass
class Lookup:
    entry: Any  # ChunkKV (torch) or ChunkState (llama.cpp): whatever the store's codec makes; None on a miss
    tier: Tier
    bytes_read: int = 0


class EntryCodec(Protocol):
    """How a store's entries become bytes for the shared tier and back, checked against the caller's key."""

    def encode(self, entry: Any) -> bytes: ...

    def decode(self, blob: bytes, *, key: str, model: str, token_ids: list[int]) -> Any: ...


class TensorCodec:
    """The torch engine's entries: safetensors K and V of a known shape and dtype."""

    def __init__(self, shape: tuple[int, int, int], dtype: Any) -> None:
        self.shape, self.dtype = shape, dtype

    def encode(self, entry: ChunkKV) -> bytes:
        return serialize(entry)

    def decode(self, blob: bytes, *, key: str, model: str, token_ids: list[int]) -> ChunkKV:
        return deserialize(blob, key=key, model=model, token_ids=token_ids, shape=self.shape, dtype=self.dtype)


class ChunkKVStore:
    """Memory tier (bounded bytes, ``craft`` or ``lru`` eviction) over an optional shared backend.

    Writes go to both tiers; a backend hit is promoted to memory. ``get_or_compute`` lets one thread
    compute a missing chunk while concurrent askers of the same key wait for its result.

    ``local=True`` lookups read the memory tier only, and ``defer=True`` writes reach the backend only at
    ``flush_writes``: the torch engine reads the shared tier before it takes its step lock and writes to
    it after releasing it, so a slow backend delays one request, never every request's decode steps.
    """

    def __init__(
        self,
        *,
        model: str,
        shape: tuple[int, int, int] | None = None,
        dtype: Any = None,
        memory_bytes: int,
        policy: EvictionPolicy = "craft",
        backend: KVBackend | None = None,
        ttl_s: int | None = None,
        codec: EntryCodec | None = None,
        label: str | None = None,
    ) -> None:
        """``codec``: how entries cross the shared tier; None is the torch engine's tensors of ``shape``
        and ``dtype`` (the llama.cpp engine passes its opaque sequence states' codec). ``label``: the model id
        its metrics carry (None: ``model``, the fingerprint)."""
        self.model = model
        self.metrics = ChunkMetrics(label or model)
        if codec is None:
            if shape is None or dtype is None:
                raise ValueError("a tensor store needs shape and dtype (or pass a codec)")
            codec = TensorCodec(shape, dtype)
        self.codec = codec
        self.memory: ByteBoundedCache[Any] = ByteBoundedCache(memory_bytes, policy)
        self.backend = backend
        self.ttl_s = ttl_s
        self._inflight: dict[str, threading.Event] = {}
        self._inflight_lock = threading.Lock()
        self._unwritten: list[Any] = []  # deferred backend writes, oldest first
        self._unwritten_lock = threading.Lock()

    @property
    def backend_tier(self) -> str:
        return self.backend.name if self.backend is not None else "none"

    def _remember(self, entry: Any) -> None:
        evicted = self.memory.put(entry.key, entry, entry.nbytes, entry.compute_s)
        if evicted:
            self.metrics.evicted(self.memory.policy, len([k for k in evicted if k != entry.key]))
        self.metrics.held(self.memory.used_bytes)

    def get(self, key: str, token_ids: list[int], *, local: bool = False) -> Lookup:
        entry = self.memory.get(key)
        if entry is not None:
            if entry.token_ids == token_ids:
                self.metrics.lookup("memory", "hit")
                return Lookup(entry, "memory")
            # A hash collision or a bug: never serve it.
            self.memory.remove(key)
            self.metrics.lookup("memory", "corrupt")
        else:
            self.metrics.lookup("memory", "miss")
        if self.backend is None or local:
            return Lookup(None, "miss")
        tier = self.backend.name
        try:
            blob = self.backend.get(key)
        except CacheError as exc:
            self.metrics.lookup(tier, "error")
            logger.warning("chunk-KV backend get failed: %s", exc)
            return Lookup(None, "miss")
        if blob is None:
            self.metrics.lookup(tier, "miss")
            return Lookup(None, "miss")
        self.metrics.moved(tier, "read", len(blob))
        try:
            entry = self.codec.decode(blob, key=key, model=self.model, token_ids=token_ids)
        except CorruptEntryError as exc:
            self.metrics.lookup(tier, "corrupt")
            logger.warning("dropping corrupt chunk-KV entry %s: %s", key, exc)
            self._drop_backend(key)
            return Lookup(None, "miss", len(blob))
        self.metrics.lookup(tier, "hit")
        self._remember(entry)
        return Lookup(entry, "redis", len(blob))

    def put(self, entry: Any, *, defer: bool = False) -> int:
        """Store in both tiers; returns the bytes written to the backend (none yet when deferred)."""
        self._remember(entry)
        if self.backend is None:
            return 0
        if defer:
            with self._unwritten_lock:
                self._unwritten.append(entry)
            return 0
        return self._write(entry)

    def flush_writes(self) -> int:
        """Write the deferred entries to the backend; returns the bytes written."""
        with self._unwritten_lock:
            entries, self._unwritten = self._unwritten, []
        return sum(self._write(e) for e in entries)

    def _write(self, entry: Any) -> int:
        assert self.backend is not None
        blob = self.codec.encode(entry)
        try:
            self.backend.put(entry.key, blob, self.ttl_s)
        except CacheError as exc:
            self.metrics.lookup(self.backend.name, "error")
            logger.warning("chunk-KV backend put failed: %s", exc)
            return 0
        self.metrics.moved(self.backend.name, "write", len(blob))
        return len(blob)

    def get_or_compute(
        self, key: str, token_ids: list[int], compute: Callable[[], Any], *, local: bool = False
    ) -> tuple[Lookup, bool]:
        """The entry from a tier, or computed once (concurrent callers of one key wait for that one).
        Returns the lookup and whether this call computed it. ``local``: the memory tier only, and a
        computed entry's backend write deferred to ``flush_writes``."""
        while True:
            found = self.get(key, token_ids, local=local)
            if found.entry is not None:
                return found, False
            with self._inflight_lock:
                event = self._inflight.get(key)
                if event is None:
                    event = threading.Event()
                    self._inflight[key] = event
                    owner = True
                else:
                    owner = False
            if not owner:
                event.wait()
                continue  # the owner stored it (or failed: then this caller computes)
            try:
                started = time.perf_counter()
                entry = compute()
                entry.compute_s = entry.compute_s or time.perf_counter() - started
                self.put(entry, defer=local)
                return Lookup(entry, "miss"), True
            finally:
                with self._inflight_lock:
                    self._inflight.pop(key, None)
                event.set()

    def _drop_backend(self, key: str) -> None:
        if self.backend is None:
            return
        try:
            self.backend.remove(key)
        except CacheError as exc:
            logger.warning("chunk-KV backend remove failed: %s", exc)

    def clear_memory(self) -> None:
        self.memory.clear()
        self.metrics.held(0)

    def close(self) -> None:
        self.clear_memory()
        if self.backend is not None:
            self.backend.close()
