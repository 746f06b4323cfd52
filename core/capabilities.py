"""What an engine can do: the names engines declare (services.workers.registry.ENGINES) and the layers
above the engines (config validation, the SLA controller) read, kept at the bottom so both use one spelling."""

from __future__ import annotations

PRIORITY_SCHEDULING = "priority_scheduling"  # waiting steps of higher SLA priority run first
CHUNK_CACHE = "chunk_cache"  # reuses stored per-chunk KV (Cache-Craft)
SPEC_PER_REQUEST = "spec_per_request"  # a request may turn the draft pair off (the plan's `speculative`)
ADAPTIVE_K = "adaptive_k"  # SpecDec++ candidate length
SELF_DRAFT = "self_draft"  # the target's first layers draft
HYBRID_DRAFT = "hybrid_draft"  # prompt lookup first, the draft model where lookup finds nothing
ATTENTION_SIGNALS = "attention_signals"  # per-token attention for DRAGIN (entropies every engine has)
DRAFT_MODEL = "draft_model"  # a smaller model with the same tokenizer drafts
CHUNK_PRECOMPUTE = "chunk_precompute"  # computes ingested chunks' KV ahead, in the background
CAPABILITIES = (
    PRIORITY_SCHEDULING,
    CHUNK_CACHE,
    SPEC_PER_REQUEST,
    ADAPTIVE_K,
    SELF_DRAFT,
    HYBRID_DRAFT,
    ATTENTION_SIGNALS,
    DRAFT_MODEL,
    CHUNK_PRECOMPUTE,
)
