"""Chunk-KV reuse for one model: find the chunks in a prompt, fetch or compute their KV, blend, prefill.

The prompt is tokenized whole (the same ids a plain prefill sees) and each chunk's token span is found
from the tokenizer's character offsets, so reuse changes which KV the prefill starts from, never the
prompt. Everything before the first chunk is the shared prefix: its KV is stored too, exactly (it sits
at position 0 with nothing before it). Tokens between and after chunks (separators, the question) are
always computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from cache.chunk_kv import ChunkKV, ChunkKVStore, Lookup, chunk_key
from cache.kv_blend import BlendResult, KVBlender, to_dynamic_cache
from core.chunks import PromptChunk

if TYPE_CHECKING:
    from cache.base import KVBackend
    from cache.eviction import EvictionPolicy

ReuseMode = Literal["blend", "prefix", "full"]


@dataclass
class Span:
    start: int  # token positions in the prompt, [start, end)
    end: int
    namespace: str = ""  # of the chunk's document: part of its entry's key
    stored: bool = True  # False: computed in place, never looked up or stored (PromptChunk.stored)


@dataclass
class Prefilled:
    """A prefill's outcome for the decode loop, and the figures for the trace."""

    prompt_ids: list[int]
    logits: torch.Tensor
    cache: Any  # transformers.DynamicCache
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)
    # Work left for after the answer (storing missed chunks); the engine runs it.
    after: Callable[[], None] | None = None


def locate_chunks(
    prompt: str, offsets: list[tuple[int, int]], chunks: Sequence[PromptChunk], min_tokens: int
) -> list[Span]:
    """Token spans of the chunk texts found in ``prompt``, in prompt order, non-overlapping, each with its
    chunk's namespace.

    A token belongs to a chunk when its characters overlap the chunk's text (a leading space merged
    into the first word stays with the chunk, so its ids are the same wherever the chunk is placed)."""
    found: list[tuple[int, int, str, bool]] = []
    for text, namespace, stored in dict.fromkeys(c for c in chunks if c.text.strip()):
        at = prompt.find(text)
        if at >= 0:
            found.append((at, at + len(text), namespace, stored))
    spans: list[Span] = []
    for cs, ce, namespace, stored in sorted(found):
        first = next((i for i, (s, e) in enumerate(offsets) if e > cs and e > s), None)
        if first is None:
            continue
        last = first
        while last < len(offsets) and offsets[last][0] < ce:
            last += 1
        if spans and first < spans[-1].end:
            continue  # overlaps the previous chunk's tokens
        if last - first >= min_tokens:
            spans.append(Span(first, last, namespace, stored))
    return spans


class ChunkReuse:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        fingerprint: str,
        memory_bytes: int,
        policy: EvictionPolicy = "craft",
        backend: KVBackend | None = None,
        ttl_s: int | None = None,
        recompute_fraction: float = 0.15,
        min_chunk_tokens: int = 8,
        label: str | None = None,
    ) -> None:
        """``label``: the model id the cache's metrics carry (None: the fingerprint)."""
        self.blender = KVBlender(model)
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.recompute_fraction = recompute_fraction
        self.min_chunk_tokens = min_chunk_tokens
        b = self.blender
        self.store = ChunkKVStore(
            model=fingerprint,
            shape=(b.n_layers, b.kv_heads, b.head_dim),
            dtype=b.dtype,
            memory_bytes=memory_bytes,
            policy=policy,
            backend=backend,
            ttl_s=ttl_s,
            label=label,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "recompute_fraction": self.recompute_fraction,
            "memory_bytes": self.store.memory.capacity,
            "eviction": self.store.memory.policy,
            "backend": self.store.backend_tier,
        }

    def tokenize(self, prompt: str, chunks: Sequence[PromptChunk]) -> tuple[list[int], list[Span]]:
        enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        # A text made for one prompt is not a chunk here: this path stores every chunk it places.
        stored = [c for c in chunks if c.stored]
        return ids, locate_chunks(prompt, offsets, stored, self.min_chunk_tokens)

    # -- entries ---------------------------------------------------------------------------------

    def _prefix_entry(self, prefix_ids: list[int], *, local: bool = False) -> tuple[Lookup, bool]:
        key = chunk_key(self.fingerprint, [], prefix_ids, namespace="")

        def compute() -> ChunkKV:
            started = time.perf_counter()
            k, v = self.blender.compute_span(prefix_ids, *self.blender.empty_kv(len(prefix_ids)), 0)
            return ChunkKV(key, self.fingerprint, list(prefix_ids), 0, k, v, time.perf_counter() - started)

        return self.store.get_or_compute(key, prefix_ids, compute, local=local)

    def _chunk_entry(
        self, prefix: ChunkKV, chunk_ids: list[int], namespace: str, *, local: bool = False
    ) -> tuple[Lookup, bool]:
        key = chunk_key(self.fingerprint, prefix.token_ids, chunk_ids, namespace=namespace)

        def compute() -> ChunkKV:
            started = time.perf_counter()
            p = len(prefix.token_ids)
            keys, values = self.blender.empty_kv(p + len(chunk_ids))
            keys[:, 0, :, :p] = prefix.keys
            values[:, 0, :, :p] = prefix.values
            k, v = self.blender.compute_span(prefix.token_ids + chunk_ids, keys, values, p)
            return ChunkKV(key, self.fingerprint, list(chunk_ids), p, k, v, time.perf_counter() - started)

        return self.store.get_or_compute(key, chunk_ids, compute, local=local)

    def warm(self, prompt: str, chunks: Sequence[PromptChunk]) -> dict[str, int]:
        """Store the prefix's and the chunks' KV for this prompt shape (no answer is generated)."""
        ids, spans = self.tokenize(prompt, chunks)
        counts = {"chunks": len(spans), "computed": 0}
        if not spans:
            return counts
        prefix, made = self._prefix_entry(ids[: spans[0].start])
        counts["computed"] += int(made)
        assert prefix.entry is not None
        for s in spans:
            _, made = self._chunk_entry(prefix.entry, ids[s.start : s.end], s.namespace)
            counts["computed"] += int(made)
        return counts

    def drop_from_memory(self, prompt: str, chunks: Sequence[PromptChunk]) -> int:
        """Remove this prompt's prefix and chunk entries from the memory tier (the next lookups go to the
        second tier); returns how many were there."""
        ids, spans = self.tokenize(prompt, chunks)
        if not spans:
            return 0
        prefix_ids = ids[: spans[0].start]
        keys = [chunk_key(self.fingerprint, [], prefix_ids, namespace="")]
        keys += [chunk_key(self.fingerprint, prefix_ids, ids[s.start : s.end], namespace=s.namespace) for s in spans]
        dropped = sum(self.store.memory.remove(k) for k in keys)
        self.store.metrics.held(self.store.memory.used_bytes)
        return dropped

    # -- prefill ---------------------------------------------------------------------------------

    def prefetch(self, prompt: str, chunks: Sequence[PromptChunk], *, mode: ReuseMode = "blend") -> dict[str, Lookup]:
        """Look up this prompt's prefix and chunk entries in every tier, without the model: the engine
        calls it before taking its step lock, then passes the result to ``prefill(fetched=...)``, which
        reads the memory tier only. Returns the lookups by key."""
        if mode == "full":
            return {}
        ids, spans = self.tokenize(prompt, chunks)
        if not spans:
            return {}
        prefix_ids = ids[: spans[0].start]
        wanted = [(chunk_key(self.fingerprint, [], prefix_ids, namespace=""), prefix_ids)]
        if mode == "blend":
            wanted += [
                (
                    chunk_key(self.fingerprint, prefix_ids, ids[s.start : s.end], namespace=s.namespace),
                    ids[s.start : s.end],
                )
                for s in spans
            ]
        return {key: self.store.get(key, token_ids) for key, token_ids in wanted}

    def prefill(
        self,
        prompt: str,
        chunks: Sequence[PromptChunk],
        *,
        mode: ReuseMode = "blend",
        fraction: float | None = None,
        exact_at_full: bool = True,
        fetched: dict[str, Lookup] | None = None,
    ) -> Prefilled:
        """Prefill ``prompt`` reusing stored KV. ``mode``: blend (prefix + chunks, selective recompute),
        prefix (the stored prefix only, everything after it computed: what prefix caching gives), full
        (nothing reused). Chunks no tier holds are computed in place this time and stored alone for
        the next request. ``exact_at_full=False``: fraction 1 runs the blend path, not a plain prefill
        (tests compare that path with a full prefill). ``fetched``: the lookups ``prefetch`` made; then
        nothing here calls the shared tier, and the entries computed here reach it at the store's
        ``flush_writes``."""
        started = time.perf_counter()
        fraction = self.recompute_fraction if fraction is None else fraction
        ids, spans = self.tokenize(prompt, chunks) if mode != "full" else (self._ids(prompt), [])
        n = len(ids)
        b = self.blender
        keys, values = b.empty_kv(n)
        stored = torch.zeros(n, dtype=torch.bool)
        candidates = torch.zeros(n, dtype=torch.bool)
        tiers: dict[str, int] = {"memory": 0, "redis": 0, "miss": 0}
        bytes_read = 0
        missed: list[tuple[list[int], str]] = []
        prefix_tier = None
        prefix: ChunkKV | None = None
        local = fetched is not None
        fetched = fetched or {}

        def lookup(key: str, token_ids: list[int]) -> Lookup:
            found = fetched.get(key)
            if found is not None and found.entry is not None:
                return found
            return self.store.get(key, token_ids, local=local)

        if spans:
            prefix_ids = ids[: spans[0].start]
            early = fetched.get(chunk_key(self.fingerprint, [], prefix_ids, namespace=""))
            if early is not None and early.entry is not None:
                found, computed_now = early, False
            else:
                found, computed_now = self._prefix_entry(prefix_ids, local=local)
            prefix_tier = "miss" if computed_now else found.tier
            prefix = found.entry
            assert prefix is not None
            bytes_read += found.bytes_read
            p = len(prefix_ids)
            keys[:, 0, :, :p] = prefix.keys
            values[:, 0, :, :p] = prefix.values
            stored[:p] = True
            if mode == "blend":
                for s in spans:
                    cid = ids[s.start : s.end]
                    hit = lookup(chunk_key(self.fingerprint, prefix_ids, cid, namespace=s.namespace), cid)
                    bytes_read += hit.bytes_read
                    if hit.entry is None:
                        tiers["miss"] += 1
                        missed.append((cid, s.namespace))
                        continue
                    tiers[hit.tier] += 1
                    entry = hit.entry
                    keys[:, 0, :, s.start : s.end] = b.realign(entry.keys, s.start - entry.base)
                    values[:, 0, :, s.start : s.end] = entry.values
                    stored[s.start : s.end] = True
                    candidates[s.start : s.end] = True
        assembled = time.perf_counter()
        run_fraction = {"blend": fraction, "prefix": 0.0, "full": 1.0}[mode]
        result: BlendResult = b.prefill(
            ids, keys, values, stored, candidates, run_fraction, exact_at_full=exact_at_full or mode != "blend"
        )
        cache = result.cache if result.cache is not None else to_dynamic_cache(result.keys, result.values)
        done = time.perf_counter()
        chunk_tokens = sum(s.end - s.start for s in spans)
        reused_chunk = int(candidates.sum())
        recomputed_chunk = int((candidates & result.recomputed).sum())
        computed = int((~stored).sum())
        reused = int((stored & ~result.recomputed).sum())
        self.store.metrics.tokens("reused", reused)
        self.store.metrics.tokens("recomputed", int((stored & result.recomputed).sum()))
        self.store.metrics.tokens("computed", computed)
        report = {
            "mode": mode,
            "prompt_tokens": n,
            "chunks": len(spans),
            "chunk_hits": {"memory": tiers["memory"], "redis": tiers["redis"]},
            "chunk_misses": tiers["miss"],
            "prefix": prefix_tier,
            "chunk_tokens": chunk_tokens,
            "chunk_tokens_reused": reused_chunk - recomputed_chunk,
            "chunk_tokens_recomputed": recomputed_chunk + sum(len(c) for c, _ in missed),
            "tokens_computed": n - reused,
            "recompute_fraction": round(fraction, 4) if mode == "blend" else None,
            "bytes_read": bytes_read,
            "assemble_s": round(assembled - started, 6),
            "prefill_s": round(done - assembled, 6),
        }
        out = Prefilled(ids, result.logits, cache, done - started, report)
        if missed:
            assert prefix is not None
            kept_prefix = prefix

            def store_missed() -> None:
                # Missed chunks were computed in place (exact); their stored form is computed alone
                # after the prefix once the answer is out, so it never delays the first token.
                for cid, namespace in missed:
                    self._chunk_entry(kept_prefix, cid, namespace, local=local)

            out.after = store_missed
        return out

    def _ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False).input_ids)
