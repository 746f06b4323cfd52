"""The cache package's config sections: chunk-KV reuse (per model) and the response cache."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config import Section


class ChunkCacheConfig(Section):
    """Chunk-KV reuse (Cache-Craft, CacheBlend) in the torch and llama.cpp engines: the KV of retrieved
    chunks is stored once and reused, with a fraction of chunk tokens recomputed so chunks see each other."""

    enabled: bool = Field(False, description="Reuse stored chunk KV at prefill (answers may differ slightly).")
    recompute_fraction: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Share of reused chunk tokens recomputed (0 = plain reuse, 1 = full prefill); None = the "
        "engine's measured default: torch 0.15 (tokens picked by layer-1 deviation), llamacpp 0.05 (the first "
        "tokens of each chunk).",
    )
    memory_bytes: int = Field(1 << 30, ge=0, description="Bytes of chunk KV the worker keeps in memory.")
    eviction: Literal["craft", "lru"] = Field(
        "craft", description="Memory tier eviction: craft (reuse frequency, recency, recompute cost) or lru."
    )
    backend_url: str | None = Field(
        None, description="Second tier, redis://host:port/db; None = REDIS_URL when set, else memory only."
    )
    ttl_s: int = Field(7 * 86400, gt=0, description="Lifetime of entries in the second tier, seconds.")
    min_chunk_tokens: int = Field(8, ge=1, description="Chunks shorter than this are computed, not stored.")
    precompute: bool = Field(
        True,
        description="llamacpp: compute the KV of ingested chunks (and the bundled corpus at start) in the "
        "background, so the first question about a document reuses it; torch computes on first sight.",
    )
    precompute_bytes: int | None = Field(
        None,
        ge=0,
        description="llamacpp: bytes of chunk KV computed ahead at most (the rest on demand); None = memory_bytes.",
    )


class CacheConfig(Section):
    response_cache_url: str = Field(
        "memory://", description="memory:// or redis://host:port/db; REDIS_URL overrides it."
    )
    ttl_s: int = Field(3600, gt=0, description="Response cache entry lifetime in seconds.")
    max_entries: int = Field(1024, gt=0, description="In-memory response cache capacity.")
    enabled: bool = Field(True, description="Serve repeated greedy questions from the cache.")
    semantic: bool = Field(
        False,
        description="Also serve a question close in meaning to an earlier one of the same scope (tenant, plan, "
        "shaping; no history) from its entry: `ragyard bench cache` measures where it pays.",
    )
    semantic_threshold: float = Field(
        0.975,
        gt=0.0,
        le=1.0,
        description="Cosine of the two questions' embeddings at which a semantic match is served: `ragyard bench "
        "cache` chose 0.975 on real question pairs (NQ, TriviaQA, SQuAD dev, from pyserini's jar).",
    )
    semantic_entries: int = Field(512, gt=0, description="Questions the semantic index keeps per scope (LRU).")
    semantic_guard: bool = Field(
        True,
        description="Never match questions that differ in negation, numbers, names or a pair of opposites.",
    )
