"""The retrieval package's config sections: embedder, index, policies' settings and the startup corpus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config import PROJECT_ROOT, Section


class EmbedderConfig(Section):
    id: str = Field(
        "all-minilm-l6-v2", min_length=1, description="The model id /v1/embeddings answers to and /v1/models lists."
    )
    path: str | None = Field(None, description="sentence-transformers folder; None = packaged MiniLM.")
    device: str = Field("cpu", description="torch device for the embedder.")
    batch_size: int = Field(32, gt=0, description="Texts per embedding batch.")
    max_tokens_per_request: int = Field(
        65_536,
        gt=0,
        description="Tokens one `/v1/embeddings` request may embed, each input counted up to the embedder's "
        "maximum sequence length (256): about 10 s of this CPU's two cores. Over it is a 400.",
    )


class IndexConfig(Section):
    dir: str = Field(".ragyard/index", description="Where the FAISS index and doc store persist.")
    chunk_tokens: int = Field(200, ge=32, le=512, description="Chunk size in embedder tokens.")
    chunk_overlap_tokens: int = Field(40, ge=0, description="Overlap between neighbouring chunks.")
    max_tokens_per_upload: int = Field(
        400_000,
        gt=0,
        description="Embedder tokens one document upload may hold (all its documents' text): about a minute of "
        "embedding on two cores, which other requests interleave with. Over it is a 400 before anything is "
        "embedded.",
    )
    lock_timeout_s: float = Field(
        10.0,
        ge=0,
        description="How long opening `dir` waits for another process's writer lock before it fails (one "
        "writer per index directory).",
    )
    log_url: str | None = Field(
        None,
        description="The corpus log, the store of record that several retriever replicas share: redis://host:port/db "
        "(each replica applies its entries to its own snapshot under `dir`/replica-N). None: `dir` itself is the "
        "record, and one retriever replica may write it.",
    )
    log_fsync: bool = Field(
        True,
        description="Acknowledge a document only once Redis has written it to its append-only file (WAITAOF; "
        "needs `appendonly yes`). false: acknowledged once in Redis's memory.",
    )
    log_prefix: str = Field("ragyard:corpus", min_length=1, description="Key prefix of the corpus log in Redis.")

    @model_validator(mode="after")
    def _overlap(self) -> IndexConfig:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be smaller than chunk_tokens")
        return self


class RetrievalConfig(Section):
    default_policy: str = Field("single", description="Policy the router picks when none is asked.")
    top_k: int = Field(4, gt=0, description="Passages retrieved per step.")
    search: Literal["dense", "bm25", "hybrid"] = Field(
        "hybrid",
        description="dense: embedding similarity (FAISS); bm25: lexical (bm25s); hybrid: both fused by "
        "reciprocal rank. `ragyard bench retrieval` measures them (README: Hybrid retrieval).",
    )
    hybrid_candidates: int = Field(20, gt=0, le=1000, description="hybrid: passages taken from each ranking.")
    rrf_k: int = Field(60, gt=0, description="hybrid: reciprocal rank fusion constant (score = sum 1/(rrf_k+rank)).")
    max_top_k: int = Field(20, gt=0, description="Largest top_k a request may ask for.")
    followup: Literal["off", "history", "model"] = Field(
        "history",
        description="How a question that follows up the conversation is searched: history (joined to the "
        "previous question when it refers back), model (rewritten standalone by the answering model, one short "
        "call), off (as it is). `ragyard bench docsqa --followups` measures them (README: Follow-ups).",
    )
    max_context_tokens: int = Field(1200, gt=0, description="Model tokens of passages in one prompt.")
    context: Literal["passages", "sentences"] = Field(
        "sentences",
        description="What of the retrieved passages the answer prompt holds: passages (each chunk whole) or "
        "sentences (the lines and sentences that bear on the question, under their passage's heading, within "
        "`sentence_tokens`: retrieval/selection.py). `ragyard bench docsqa` measures them (README: Context a small "
        "model can use).",
    )
    sentence_tokens: int = Field(
        350, ge=32, le=4096, description="sentences: model tokens of selected text in one prompt (estimated)."
    )
    sentence_candidates: int = Field(
        8,
        gt=0,
        le=50,
        description="sentences: passages retrieved per step to select from (at least the request's top_k); "
        "their whole text is never in the prompt, so more of them costs search time, not prefill.",
    )
    multi_max_steps: int = Field(4, ge=1, le=16, description="multi: retrieval steps at most.")
    multi_step_tokens: int = Field(40, gt=0, description="multi: tokens of one reasoning sentence.")
    dragin_threshold: float = Field(
        0.45,
        gt=0,
        description="dragin: RIND score (entropy x attention received) that triggers retrieval, for every model "
        "when set; unset, each packaged model's calibrated value applies (0.45 SmolLM2-135M, 0.05 "
        "Qwen2.5-Coder-0.5B) and 0.45 for others.",
    )
    dragin_query_tokens: int = Field(8, gt=0, description="dragin: context tokens QFS puts in the query.")
    dragin_max_retrievals: int = Field(3, ge=1, le=10, description="dragin: retrievals per question at most.")
    plugins: dict[str, str] = Field(
        default_factory=dict,
        description='Further retrieval policies, name: "module:Class" (a plug-in that may live outside the repo); '
        "each is loaded and checked when the config loads, then requested, planned and budgeted like the others.",
    )
    check_support: bool = Field(
        True,
        description="Check each sentence of an answer against its passages (retrieval/support.py: lexical overlap "
        "and the embedder) and flag the unsupported ones in the record.",
    )
    evidence_line: bool = Field(
        True,
        description="Under a chat answer, quote the passages' sentences that bear most on the question, each with "
        "its passage's number (retrieval/evidence.py; when: evidence_when, how many: evidence_sentences). Not with "
        "logprobs or response_format, whose output is the model's alone, nor for style short (the bare answer).",
    )
    evidence_when: Literal["always", "failed"] = Field(
        "always",
        description="always: under every chat answer over passages; failed: only under one that fails a check "
        "(restates the question, names what no passage holds, says the passages do not hold it, or has a sentence "
        "the support check finds in no passage). `ragyard bench docsqa` measures both (README: Quoted from the "
        "passages).",
    )
    evidence_sentences: int = Field(
        2, ge=1, le=3, description="How many of the passages' sentences are quoted under an answer, best first."
    )
    injection: Literal["off", "fence", "drop"] = Field(
        "drop",
        description="Retrieved text that tries to instruct the model (retrieval/screening.py): fence quotes every "
        "passage as data and tells the model not to follow what is written in it, labelling the passages the "
        "screen flags; drop does that and leaves the flagged passages out (the trace says which); off does "
        "neither.",
    )
    canonical_chunk_order: bool = Field(
        False,
        description="Put passages in document order instead of relevance order, so a repeated set of chunks "
        "makes the same prompt and hits a prefix cache (vLLM's).",
    )


class CorpusConfig(Section):
    paths: list[str] = Field(
        default_factory=lambda: [str(PROJECT_ROOT / "README.md"), str(PROJECT_ROOT / "docs")],
        description="Files or folders indexed at startup (the bundled sample corpus).",
    )
    ingest_on_start: bool = Field(True, description="Index `paths` when the retriever starts.")
    async_files: int = Field(
        20,
        ge=1,
        description="An upload of more files than this becomes an ingestion job: 202 and a job id at once, its "
        "progress at GET /v1/documents/jobs/{id} (a client asks for a job for any upload with `Prefer: "
        "respond-async`).",
    )
    async_bytes: int = Field(8 << 20, gt=0, description="An upload larger than this (bytes) becomes a job too.")
    job_batch_documents: int = Field(
        16, ge=1, le=1000, description="Documents a job indexes per step (its progress moves by this many)."
    )
    max_jobs_per_tenant: int = Field(
        2, ge=1, description="Jobs one namespace may have running on one gateway at once; more is a 429."
    )
    jobs_url: str | None = Field(
        None,
        description="Where jobs are recorded (memory:// or redis://...; None: cache.response_cache_url). On Redis "
        "every gateway replica reports every job, and a job whose gateway stopped is reported failed.",
    )
