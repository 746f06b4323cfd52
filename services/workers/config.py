"""A worker's config section: the model it serves, the engine that runs it, and that engine's settings.

`services.config.AppConfig` composes it (``models``); the engines read it. It lives with the workers so that
the engine registry and the config that names an engine stand on one floor.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, JsonValue, field_validator, model_validator

from cache.config import ChunkCacheConfig
from core.capabilities import ADAPTIVE_K, CHUNK_CACHE, DRAFT_MODEL, HYBRID_DRAFT, SELF_DRAFT
from core.config import Section
from services.workers.registry import ENGINES, engine_capabilities, engines_with

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
# The embedded default is a ladder of packaged models, cheapest first: `model: auto` routes between them.
DEFAULT_LADDER = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


# The registered engines, as the JSON schema (and so the Helm chart) lists them.
_ENGINE_NAMES: list[JsonValue] = [*sorted(ENGINES)]


class SpeculativeConfig(Section):
    """A worker's draft pair (field names follow vLLM's ``speculative_config`` where they overlap)."""

    method: Literal["ngram", "draft_model", "self_draft", "hybrid"] = Field(
        ...,
        description="ngram: prompt lookup; draft_model: a smaller model with the same tokenizer; "
        "self_draft: the target's first layers with its head; hybrid: prompt lookup first, the draft model "
        "where lookup finds nothing (torch engine).",
    )
    num_speculative_tokens: int = Field(4, ge=1, le=16, description="Drafted tokens per round, at most (K).")
    adaptive: bool = Field(False, description="SpecDec++: stop drafting early when a rejection gets likely.")
    stop_threshold: float = Field(
        0.5, gt=0, lt=1, description="adaptive: stop once P(some drafted token is rejected) passes this."
    )
    stop_rule: Literal["threshold", "cost"] = Field(
        "threshold",
        description="adaptive: threshold = SpecDec++'s stop_threshold; cost = draft on while a longer draft "
        "promises more tokens per unit of measured cost (draft forwards plus the verify at its width).",
    )
    pad_verify: bool = Field(
        True,
        description="torch: measure the target's cost per verify width at load (a few seconds) and verify "
        "at the cheapest width at least the one needed (on a CPU 4 tokens can cost less than 3).",
    )
    predictor: str | None = Field(
        None, description="adaptive: acceptance predictor JSON fitted by `ragyard bench spec`; None = prior."
    )
    model: str | None = Field(
        None, description="draft_model: package:<catalog name> or a local HF folder; None = the packaged SmolLM2."
    )
    self_draft_layers: int = Field(8, ge=1, description="self_draft: target layers the draft runs.")
    prompt_lookup_max: int = Field(3, ge=1, le=16, description="ngram: longest suffix n-gram matched.")
    prompt_lookup_min: int = Field(1, ge=1, le=16, description="ngram: shortest suffix n-gram matched.")

    @model_validator(mode="after")
    def _ranges(self) -> SpeculativeConfig:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("prompt_lookup_min must not exceed prompt_lookup_max")
        if self.predictor is not None and not self.adaptive:
            raise ValueError("predictor is only used with adaptive: true")
        return self


class VllmConfig(Section):
    """Settings of the vLLM engine (``engine: vllm``); the model, dtype and lengths come from the model."""

    enforce_eager: bool = Field(
        True, description="Skip torch.compile and CUDA graphs: starts in ~25 s on CPU; off decodes faster."
    )
    enable_prefix_caching: bool = Field(True, description="Automatic prefix caching of shared prompt prefixes.")
    max_num_seqs: int = Field(16, gt=0, description="Requests batched together at most.")
    max_logprobs: int = Field(
        20, ge=1, le=100, description="Top log-probabilities per token (DRAGIN's entropies are taken from them)."
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="GPU hosts: share of GPU memory vLLM takes.")
    cpu_kv_cache_gib: int = Field(2, ge=1, description="CPU hosts: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE).")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vLLM AsyncEngineArgs, passed as they are (checked against vLLM when it starts).",
    )


class LlamaCppConfig(Section):
    """Settings of the llama.cpp engine (``engine: llamacpp``); the model and lengths come from the model."""

    threads: int | None = Field(None, gt=0, description="CPU threads for prefill and decode; None = every core.")
    parallel: int = Field(
        4,
        ge=1,
        le=64,
        description="Requests decoded at once, step by step in one context (a KV sequence each); more wait.",
    )
    n_batch: int = Field(512, ge=32, le=4096, description="Prompt tokens per forward pass at most.")


class ModelConfig(Section):
    id: str = Field(DEFAULT_MODEL_ID, min_length=1, description="Name clients pass as `model`.")
    path: str | None = Field(
        "package:" + DEFAULT_MODEL_ID,
        description="package:<name> picks a packaged model from services/workers/catalog.yaml (assembled, "
        "checked by sha256 and converted from its GGUF once, cached); any other value is a local HF folder. "
        "None is the packaged SmolLM2-135M-Instruct.",
    )
    engine: str = Field(
        "torch",
        description="Engine that runs the model: llamacpp (the embedded default's ladder: the GGUF as it is), "
        "torch (HF folders; DRAGIN's attention, self-draft, adaptive K) or vllm (`make install-vllm`); "
        "any engine registered in services/workers/registry.py.",
        json_schema_extra={"enum": _ENGINE_NAMES},
    )

    @field_validator("engine")
    @classmethod
    def _registered_engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"unknown engine {value!r}; valid: {', '.join(sorted(ENGINES))}")
        return value

    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    max_model_len: int = Field(2048, gt=0, description="Prompt plus completion tokens, at most.")
    max_tokens_limit: int = Field(1024, gt=0, description="Largest `max_tokens` a request may ask for.")
    default_max_tokens: int = Field(256, gt=0, description="`max_tokens` when a request gives none.")
    torch_threads: int | None = Field(None, gt=0, description="torch intra-op threads; None = torch's.")
    dragin_threshold: float | None = Field(
        None,
        gt=0,
        description="dragin: this model's RIND threshold; None = retrieval.dragin_threshold if set, else the "
        "packaged model's calibrated value (catalog), else 0.45.",
    )
    speculative: SpeculativeConfig | None = Field(None, description="Draft pair for speculative decoding.")
    vllm: VllmConfig = Field(default_factory=VllmConfig, description="vLLM engine settings (engine: vllm).")
    llamacpp: LlamaCppConfig = Field(
        default_factory=LlamaCppConfig, description="llama.cpp engine settings (engine: llamacpp)."
    )
    chunk_cache: ChunkCacheConfig = Field(
        default_factory=ChunkCacheConfig, description="Chunk-KV reuse (torch engine)."
    )

    @property
    def capabilities(self) -> frozenset[str]:
        """What this model's engine can do (services.workers.registry.ENGINES)."""
        return engine_capabilities(self.engine)

    @model_validator(mode="after")
    def _limits(self) -> ModelConfig:
        from services.workers.model_store import PACKAGE_PREFIX, catalog

        for where, value in (("path", self.path), ("speculative.model", self.speculative and self.speculative.model)):
            if value and value.startswith(PACKAGE_PREFIX) and value[len(PACKAGE_PREFIX) :] not in catalog():
                raise ValueError(
                    f"{where} {value!r} names no packaged model; the catalog has: "
                    + ", ".join(PACKAGE_PREFIX + n for n in sorted(catalog()))
                )
        spec = self.speculative
        can = self.capabilities
        if spec is not None:
            needs = {"self_draft": SELF_DRAFT, "hybrid": HYBRID_DRAFT, "draft_model": DRAFT_MODEL}.get(spec.method)
            if needs is not None and needs not in can:
                takes = "ngram or draft_model" if DRAFT_MODEL in can else "ngram"
                raise ValueError(
                    f"speculative.method {spec.method} runs on the {engines_with(needs)} engine only; "
                    f"{self.engine} takes {takes}"
                )
            if spec.adaptive and ADAPTIVE_K not in can:
                raise ValueError(
                    f"speculative.adaptive (SpecDec++ candidate length) runs on the {engines_with(ADAPTIVE_K)} "
                    f"engine only; {self.engine} drafts a fixed num_speculative_tokens"
                )
        if self.chunk_cache.enabled and CHUNK_CACHE not in can:
            raise ValueError(
                f"chunk_cache runs on the {engines_with(CHUNK_CACHE)} engine; vllm reuses shared prefixes with "
                "vllm.enable_prefix_caching (set retrieval.canonical_chunk_order to make repeated chunk sets hit)"
            )
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must not exceed max_tokens_limit")
        if self.max_tokens_limit >= self.max_model_len:
            raise ValueError("max_tokens_limit must be smaller than max_model_len")
        return self
