"""Chunk-KV reuse on llama.cpp: stored per-sequence states of chunks, placed at their positions in a new
prompt, with the first tokens of each chunk recomputed; chunk states computed ahead, in the background.

A stored chunk is the KV of its tokens computed once after the engine's canonical passage prefix (the chat
template's system prompt and "Passages: [1]"), saved with ``llama_state_seq_get_data`` and keyed by the
engine's fingerprint and its token ids, so any prompt that holds the same chunk text can use it, whatever
its own prefix. A prompt is assembled left to right in its request's sequence:

* the prompt's own prefix (everything before the first chunk) is an exact entry of its own;
* for each chunk, the stored KV of all but its first ``ceil(fraction * n)`` tokens is restored into a scratch
  sequence, shifted to its place (llama.cpp re-rotates the keys' RoPE on the next decode) and copied into the
  request's sequence;
* the separator before each chunk and the chunk's first tokens are then computed fresh, every chunk's in one
  batch: each run in a sequence of its own that shares the prompt's cells before it (the prefix and the reused
  chunks ahead of it), then moved into the request's sequence. A run does not see the fresh tokens of the runs
  before it; a sequence only grows at its end, so computing them in the request's sequence meant one forward
  per chunk, each reading every weight again;
* the question is decoded last, seeing everything, and gives the first token's logits.

Chunks are computed ahead in a background thread (documents at ingest, the corpus at start, and chunks a
prompt had to compute in place), in the engine's idle time: while any request holds a sequence it waits, and
a piece of a chunk at a time takes the step lock below every SLA tier.

Which tokens are recomputed differs from the torch path: there the tokens whose layer-1 KV deviates most
are picked (CacheBlend), which needs the model run layer by layer; llama.cpp runs whole forwards and
requires each sequence's new positions to follow its last one, so the recomputed tokens are a contiguous
run at the start of each chunk. That is EPIC's choice (Hu et al. 2024, "LegoLink": a chunk computed alone
turns its first tokens into attention sinks, and recomputing those few restores most of the accuracy).
Fraction 1 recomputes every chunk token: the same KV as a full prefill.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cache.chunk_kv import ChunkKVStore, Lookup, chunk_key
from cache.chunk_reuse import Span, locate_chunks
from cache.chunk_state import ChunkState, StateCodec
from core.chunks import PromptChunk
from retrieval.generation import ChatMessage, Precompute
from retrieval.prompts import SYSTEM_RAG
from services.workers.engines.llamacpp_precompute import BackgroundChunks

if TYPE_CHECKING:
    import numpy as np

    from cache.base import KVBackend
    from cache.eviction import EvictionPolicy
    from services.workers.config import ModelConfig
    from services.workers.engines.llamacpp_runtime import LlamaRuntime
    from services.workers.engines.priority_lock import PriorityLock

logger = logging.getLogger(__name__)


class ChunkHost(Protocol):
    """What the chunk cache uses of the engine it serves (`LlamaCppEngine`): its context and model, the two
    sequences it may use (a scratch one to restore states into, one to compute chunks in), its chat template,
    and the lock that orders work on the context (the engine's busy flag: requests are waiting or running)."""

    runtime: LlamaRuntime
    fingerprint: str
    model_id: str
    scratch_seq: int
    ingest_seq: int
    blend_seqs: list[int]
    _lock: PriorityLock

    @property
    def busy(self) -> bool: ...

    def render_chat(self, messages: list[ChatMessage]) -> str: ...


# Tokens of a chunk decoded per lock hold in the background, so a request's step waits little.
BACKGROUND_PIECE = 64
IDLE_POLL_S = 0.05
# The first 5% of each chunk's tokens: `bench kvcache --engine llamacpp` (README) measured F1 within a point of
# full prefill at 3.4x its TTFT, where 15% bought no F1 within that run's noise at 2.5x; with the fresh runs in
# one batch, 5.9x at the same agreement with full prefill.
DEFAULT_FRACTION = 0.05
_SENTINEL = "Ragyard sentinel passage."


@dataclass
class LlamaPrefill:
    logits: np.ndarray
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)


class LlamaChunkReuse:
    def __init__(
        self,
        engine: ChunkHost,
        *,
        memory_bytes: int,
        policy: EvictionPolicy = "craft",
        backend: KVBackend | None = None,
        ttl_s: int | None = None,
        recompute_fraction: float = 0.05,
        min_chunk_tokens: int = 8,
        precompute: bool = True,
        precompute_bytes: int | None = None,
    ) -> None:
        self.engine = engine
        self.rt = engine.runtime
        self.fingerprint = engine.fingerprint
        self.recompute_fraction = recompute_fraction
        self.min_chunk_tokens = min_chunk_tokens
        self.store = ChunkKVStore(
            model=self.fingerprint,
            memory_bytes=memory_bytes,
            policy=policy,
            backend=backend,
            ttl_s=ttl_s,
            codec=StateCodec(),
            label=engine.model_id,
        )
        self.precompute_enabled = precompute
        self.precompute_bytes = memory_bytes if precompute_bytes is None else precompute_bytes
        # The canonical prompt: where stored chunks are computed (their KV saw this prefix).
        self._canon_before, self._canon_after = self._canonical_template()
        sentinel = PromptChunk(_SENTINEL, "")
        ids, spans = self.tokenize(self._canon_before + _SENTINEL + self._canon_after, [sentinel], min_tokens=1)
        if not spans:
            raise RuntimeError("the canonical passage prompt does not tokenize around its chunk")
        self.canonical_ids = ids[: spans[0].start]
        self._canonical_state: bytes | None = None
        self.background = BackgroundChunks(engine.model_id, self._precompute_one)

    def _canonical_template(self) -> tuple[str, str]:
        messages = [
            ChatMessage(role="system", content=SYSTEM_RAG),
            ChatMessage(role="user", content=f"Passages:\n[1] {_SENTINEL}\n\nQuestion: ?"),
        ]
        text = self.engine.render_chat(messages)
        at = text.index(_SENTINEL)
        return text[:at], text[at + len(_SENTINEL) :]

    @property
    def progress(self) -> dict[str, int]:
        return self.background.progress

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "llamacpp",
            "recompute_fraction": self.recompute_fraction,
            "recompute": "first tokens of each chunk (EPIC)",
            "memory_bytes": self.store.memory.capacity,
            "memory_used_bytes": self.store.memory.used_bytes,
            "entries": len(self.store.memory),
            "eviction": self.store.memory.policy,
            "backend": self.store.backend_tier,
            "precompute": {
                "enabled": self.precompute_enabled,
                "budget_bytes": self.precompute_bytes,
                **self.background.describe(),
            },
        }

    # -- tokens -----------------------------------------------------------------------------------

    def tokenize(
        self, prompt: str, chunks: Sequence[PromptChunk], *, min_tokens: int | None = None
    ) -> tuple[list[int], list[Span]]:
        """The prompt's ids (as a plain prefill sees them) and each chunk's token span in them. Offsets come
        from the tokens' bytes; latin-1 gives a string with one character per byte to search in."""
        ids = self.rt.tokenize(prompt)
        data = prompt.encode("utf-8")
        offsets: list[tuple[int, int]] = []
        at = 0
        for t in ids:
            n = len(self.rt.piece(t))
            offsets.append((at, at + n))
            at += n
        if at != len(data):
            return ids, []  # the pieces do not spell the prompt back: reuse nothing rather than misplace KV
        as_bytes = data.decode("latin-1")
        texts = [PromptChunk(c.text.encode("utf-8").decode("latin-1"), c.namespace, c.stored) for c in chunks]
        spans = locate_chunks(as_bytes, offsets, texts, self.min_chunk_tokens if min_tokens is None else min_tokens)
        return ids, spans

    def _chunk_key(self, chunk_ids: list[int], namespace: str) -> str:
        return chunk_key(self.fingerprint, self.canonical_ids, chunk_ids, namespace=namespace)

    def _prefix_key(self, prefix_ids: list[int]) -> str:
        return chunk_key(self.fingerprint, [], prefix_ids, namespace="")

    # -- computing a chunk's state (caller holds the engine lock, except in the background) ----------

    def _canonical(self) -> bytes:
        if self._canonical_state is None:
            seq = self.engine.ingest_seq
            self.rt.seq_rm(seq)
            self.rt.decode(seq, self.canonical_ids, 0)
            self._canonical_state = self.rt.save(seq)
            self.rt.seq_rm(seq)
        return self._canonical_state

    def _compute(self, key: str, chunk_ids: list[int], *, background: bool = False) -> ChunkState:
        """The chunk's KV after the canonical prefix, in the ingest sequence; only its cells are saved.
        ``background``: the engine lock is taken per piece of the chunk (the caller holds none)."""
        started = time.perf_counter()
        seq = self.engine.ingest_seq
        lock = self.engine._lock
        p = len(self.canonical_ids)
        piece = BACKGROUND_PIECE if background else len(chunk_ids)
        try:
            for at in range(0, len(chunk_ids), piece):
                held = lock if background else None
                if held is not None:
                    # Idle time only: while a request is answered, its steps get the cores (a piece that
                    # already runs ends within a fraction of a second).
                    while self.engine.busy and not self.background.stopping:
                        time.sleep(IDLE_POLL_S)
                    held.acquire()
                try:
                    if at == 0 and not self.rt.restore(seq, self._canonical()):
                        raise RuntimeError("llama.cpp refused the canonical prefix state")
                    self.rt.decode(seq, chunk_ids[at : at + piece], p + at)
                finally:
                    if held is not None:
                        held.release()
            if background:
                lock.acquire()
            try:
                self.rt.seq_rm(seq, 0, p)
                blob = self.rt.save(seq)
            finally:
                self.rt.seq_rm(seq)
                if background:
                    lock.release()
        except BaseException:
            if background:
                with lock:
                    self.rt.seq_rm(seq)
            raise
        return ChunkState(key, self.fingerprint, list(chunk_ids), p, blob, time.perf_counter() - started)

    # -- prefill ----------------------------------------------------------------------------------

    def prefetch(self, prompt: str, chunks: Sequence[PromptChunk]) -> tuple[list[int], list[Span], dict[str, Lookup]]:
        """Tokenize and look every entry up in every tier, before the engine lock (a slow Redis delays
        this request alone)."""
        ids, spans = self.tokenize(prompt, chunks)
        found: dict[str, Lookup] = {}
        if spans:
            prefix_ids = ids[: spans[0].start]
            wanted = [(self._prefix_key(prefix_ids), prefix_ids)]
            wanted += [
                (self._chunk_key(ids[sp.start : sp.end], sp.namespace), ids[sp.start : sp.end])
                for sp in spans
                if sp.stored
            ]
            found = {key: self.store.get(key, token_ids) for key, token_ids in wanted}
        return ids, spans, found

    def prefill(
        self,
        seq: int,
        ids: list[int],
        spans: list[Span],
        fetched: dict[str, Lookup],
        *,
        fraction: float | None = None,
        mode: str = "blend",
    ) -> LlamaPrefill | None:
        """Assemble ``ids`` in sequence ``seq`` from stored states (caller holds the engine lock).
        None when the prompt holds no stored-size chunk (the plain prefill runs). ``mode`` prefix: only the
        prompt's stored prefix is reused, everything after it computed (what prefix caching gives)."""
        if not spans or spans[-1].end >= len(ids):
            return None  # no chunk, or no question after the chunks to take the first token's logits from
        started = time.perf_counter()
        fraction = self.recompute_fraction if fraction is None else fraction
        rt, scratch = self.rt, self.engine.scratch_seq
        tiers = {"memory": 0, "redis": 0}
        misses: list[tuple[str, list[int]]] = []
        bytes_read = sum(f.bytes_read for f in fetched.values())
        computed = 0
        recomputed = 0
        reused = 0
        logits = None
        rt.seq_rm(seq)
        # The prompt's own prefix: an exact entry at position 0.
        prefix_ids = ids[: spans[0].start]
        prefix_key = self._prefix_key(prefix_ids)
        hit = fetched.get(prefix_key)
        prefix_tier = "miss"
        if hit is not None and hit.entry is not None and rt.restore(seq, hit.entry.blob):
            prefix_tier = hit.tier
        else:
            logits = rt.decode(seq, prefix_ids, 0)
            computed += len(prefix_ids)
            saved = rt.save(seq)
            self.store.put(ChunkState(prefix_key, self.fingerprint, list(prefix_ids), 0, saved), defer=True)
        pos = len(prefix_ids)
        # What goes through the model, as runs of consecutive positions: the separators and first tokens of
        # reused chunks, chunks computed in place, excerpts, and last the question.
        runs: list[tuple[int, list[int]]] = []

        def fresh(start: int, tokens: list[int]) -> None:
            if runs and runs[-1][0] + len(runs[-1][1]) == start:
                runs[-1][1].extend(tokens)
            elif tokens:
                runs.append((start, list(tokens)))

        for s in spans if mode == "blend" else []:
            sep = ids[pos : s.start]
            cid = ids[s.start : s.end]
            if not s.stored:
                # A text made for this prompt alone: it joins the run of the next separator (or the question's).
                continue
            key = self._chunk_key(cid, s.namespace)
            entry = fetched.get(key)
            if entry is None or entry.entry is None:
                entry = self.store.get(key, cid, local=True)
            if entry.entry is None:
                # Not stored: computed in place, its stored form queued for the background.
                fresh(pos, sep + cid)
                computed += len(sep) + len(cid)
                misses.append((key, cid))
                pos = s.end
                continue
            r = min(len(cid), math.ceil(fraction * len(cid))) if fraction > 0 else 0
            fresh(pos, sep + cid[:r])
            computed += len(sep)
            recomputed += r
            if r < len(cid):
                state: ChunkState = entry.entry
                if not rt.restore(scratch, state.blob):
                    # llama.cpp refused the blob (another build's layout slipped past the fingerprint):
                    # drop it and compute the rest of the chunk in place.
                    self.store.metrics.lookup(entry.tier, "corrupt")
                    self.store.memory.remove(state.key)
                    fresh(s.start + r, cid[r:])
                    computed += len(cid) - r
                    misses.append((key, cid))
                    pos = s.end
                    continue
                base = state.base
                rt.seq_rm(scratch, base, base + r)
                rt.seq_add(scratch, base + r, base + len(cid), s.start - base)
                rt.seq_cp(scratch, seq)
                rt.seq_rm(scratch)
                reused += len(cid) - r
            tiers[entry.tier] = tiers.get(entry.tier, 0) + 1
            pos = s.end
        tail = ids[pos:]
        computed += len(tail)
        fresh(pos, tail)
        if runs:
            last_start, last = runs.pop()
            self._blend_runs(seq, runs)
            logits = rt.decode(seq, last, last_start)
        assert logits is not None, "a prompt ends with the question after its chunks"
        low, high = rt.pos_range(seq)
        if (low, high) != (0, len(ids) - 1):
            raise RuntimeError(f"assembled sequence spans {low}..{high}, expected 0..{len(ids) - 1}")
        done = time.perf_counter()
        self.store.metrics.tokens("reused", reused)
        self.store.metrics.tokens("recomputed", recomputed)
        self.store.metrics.tokens("computed", computed)
        if misses and self.precompute_enabled:
            self.background.add(misses)
        chunk_tokens = sum(s.end - s.start for s in spans if s.stored)
        made_here = [s for s in spans if not s.stored]
        return LlamaPrefill(
            logits,
            done - started,
            {
                "mode": mode,
                "engine": "llamacpp",
                "prompt_tokens": len(ids),
                "chunks": len(spans) - len(made_here),
                "chunk_hits": tiers,
                "chunk_misses": len(misses) if mode == "blend" else len(spans) - len(made_here),
                # Texts made for this prompt (selected sentences): computed in place after the reused prefix.
                "prompt_texts": len(made_here),
                "prefix": prefix_tier,
                "chunk_tokens": chunk_tokens,
                "chunk_tokens_reused": reused,
                "chunk_tokens_recomputed": recomputed,
                "recomputed_share": round(recomputed / chunk_tokens, 4) if chunk_tokens else 0.0,
                # Everything but the reused chunk tokens and a restored prefix went through the model.
                "tokens_computed": len(ids) - reused - (len(prefix_ids) if prefix_tier != "miss" else 0),
                "recompute_fraction": round(fraction, 4),
                "bytes_read": bytes_read,
                "prefill_s": round(done - started, 6),
            },
        )

    def _blend_runs(self, seq: int, runs: list[tuple[int, list[int]]]) -> None:
        """Compute the runs of fresh tokens between reused chunks, side by side: each in a blend sequence that
        holds the prompt's cells before it (the prefix and the reused chunks ahead, shared, not copied), all
        in one batch where they fit, then moved into ``seq``. A sequence only grows at its end, so computing
        them in ``seq`` itself took one forward per chunk, each reading every weight again; a run here does not
        see the fresh tokens of the runs before it (the question, decoded after, sees them all)."""
        rt = self.rt
        spare = self.engine.blend_seqs
        group: list[tuple[int, list[int]]] = []

        def flush() -> None:
            if not group:
                return
            placed = list(zip(spare, group, strict=False))
            for f, (start, _) in placed:  # empty: every group's sequences are cleared below
                rt.seq_cp(seq, f, 0, start)
            try:
                if len(group) == 1 and len(group[0][1]) > rt.n_batch:
                    rt.decode(placed[0][0], group[0][1], group[0][0])  # one long run: in n_batch pieces
                else:
                    rt.decode_runs([(f, tokens, start) for f, (start, tokens) in placed])
                for f, (start, tokens) in placed:
                    rt.seq_cp(f, seq, start, start + len(tokens))
            finally:
                for f, _ in placed:
                    rt.seq_rm(f)
            group.clear()

        used = 0
        for start, tokens in runs:
            if group and (len(group) == len(spare) or used + len(tokens) > rt.n_batch):
                flush()
                used = 0
            group.append((start, tokens))
            used += len(tokens)
        flush()

    # -- ahead of time --------------------------------------------------------------------------

    def warm(self, prompt: str, chunks: Sequence[PromptChunk]) -> dict[str, int]:
        """Store this prompt's prefix and chunk states now, in the calling thread (benchmarks, tests)."""
        ids, spans = self.tokenize(prompt, chunks)
        counts = {"chunks": len(spans), "computed": 0}
        if not spans:
            return counts
        prefix_ids = ids[: spans[0].start]
        prefix_key = self._prefix_key(prefix_ids)
        lock = self.engine._lock
        if self.store.get(prefix_key, prefix_ids).entry is None:
            seq = self.engine.ingest_seq
            with lock:
                started = time.perf_counter()
                self.rt.seq_rm(seq)
                self.rt.decode(seq, prefix_ids, 0)
                state = self.rt.save(seq)
                self.rt.seq_rm(seq)
            took = time.perf_counter() - started
            self.store.put(ChunkState(prefix_key, self.fingerprint, list(prefix_ids), 0, state, took))
            counts["computed"] += 1
        for s in spans:
            if not s.stored:
                continue
            cid = ids[s.start : s.end]
            key = self._chunk_key(cid, s.namespace)
            if self.store.get(key, cid).entry is None:
                with lock:
                    entry = self._compute(key, cid)
                self.store.put(entry)
                counts["computed"] += 1
        return counts

    def drop_from_memory(self, prompt: str, chunks: Sequence[PromptChunk]) -> int:
        """Take this prompt's prefix and chunk entries out of the memory tier (the next lookups go to the
        shared tier); returns how many were there."""
        ids, spans = self.tokenize(prompt, chunks)
        if not spans:
            return 0
        keys = [self._prefix_key(ids[: spans[0].start])]
        keys += [self._chunk_key(ids[s.start : s.end], s.namespace) for s in spans if s.stored]
        return sum(self.store.memory.remove(k) for k in keys)

    def chunk_ids(self, chunk: PromptChunk) -> list[int] | None:
        """The ids the chunk's text has as a passage in a prompt (None: too short to store)."""
        ids, spans = self.tokenize(self._canon_before + chunk.text + self._canon_after, [chunk])
        if not spans:
            return None
        return ids[spans[0].start : spans[0].end]

    def enqueue(self, chunks: Sequence[PromptChunk]) -> Precompute:
        """Queue chunks for the background; returns at once."""
        if not self.precompute_enabled:
            return {"queued": 0, "enabled": False}
        found = [(c, self.chunk_ids(c)) for c in chunks]
        items = [(self._chunk_key(cid, c.namespace), cid) for c, cid in found if cid is not None]
        return {"queued": self.background.add(items), "enabled": True}

    def _precompute_one(self, key: str, cid: list[int]) -> str:
        if self.store.get(key, cid).entry is not None:
            return "present"
        if self.store.memory.used_bytes >= self.precompute_bytes:
            return "over_budget"
        entry = self._compute(key, cid, background=True)
        self.store.put(entry)
        return "computed"

    def wait_idle(self, timeout: float) -> bool:
        return self.background.wait_idle(timeout)

    def close(self) -> None:
        self.background.close()
        self.store.close()


def build_chunk_reuse(engine: ChunkHost, config: ModelConfig) -> LlamaChunkReuse:
    from cache.backends import chunk_cache_backend

    cc = config.chunk_cache
    return LlamaChunkReuse(
        engine,
        memory_bytes=cc.memory_bytes,
        policy=cc.eviction,
        backend=chunk_cache_backend(cc.backend_url),
        ttl_s=cc.ttl_s,
        recompute_fraction=DEFAULT_FRACTION if cc.recompute_fraction is None else cc.recompute_fraction,
        min_chunk_tokens=cc.min_chunk_tokens,
        precompute=cc.precompute,
        precompute_bytes=cc.precompute_bytes,
    )
