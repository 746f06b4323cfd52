"""HF transformers on CPU or GPU: the engine of the research features (DRAGIN's attention signals, the
self-draft, SpecDec++'s adaptive K, blended chunk KV by layer-1 deviation) and of operators' HF folders.

The decode loop is ours rather than ``model.generate`` because the worker needs per-stage
timings, stop strings applied to streamed text, fair interleaving of concurrent requests and,
in later work, direct access to the KV cache (chunk-KV reuse, speculative drafts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from core.chunks import PromptChunk
from retrieval.generation import (
    FinishReason,
    GenerationChunk,
    GenerationStats,
    SamplingParams,
    SignalResult,
)
from services.workers.engines.shaping import EnforcerTables, OutputShaper
from services.workers.engines.stepping import (
    SteppedEngine,
    StopAwareDetokenizer,
    emit_tokens,
    last_chunk,
    signal_tokens,
)
from services.workers.model_store import resolve_model_path
from services.workers.spec.verify import sample_token
from services.workers.text import TokenizerMixin

if TYPE_CHECKING:
    import torch

    from cache.chunk_reuse import ChunkReuse, Prefilled, ReuseMode
    from services.workers.config import ModelConfig
    from services.workers.spec.decode import SpecSetup, SpecStats

logger = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class TorchEngine(SteppedEngine, TokenizerMixin):
    def __init__(self, config: ModelConfig, *, cache_dir: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        path = resolve_model_path(config.path, cache_dir)
        self.model_id = config.id
        self.max_model_len = config.max_model_len
        self.device = torch.device(config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, _DTYPES[config.dtype]))
        self.model: Any = model.to(self.device).eval()
        self.eos_ids = self.end_ids(getattr(self.model.generation_config, "eos_token_id", None))
        self.enforcer_tables = EnforcerTables(self.tokenizer, self.eos_ids)  # built on the first response_format
        self.spec: SpecSetup | None = None
        if config.speculative is not None:
            from services.workers.spec.decode import build_setup

            self.spec = build_setup(
                config.speculative,
                self.model,
                self.device,
                cache_dir,
                target_tokenizer=self.tokenizer,
                target_name=config.id,
            )
        self.chunk_reuse: ChunkReuse | None = None
        if config.chunk_cache.enabled:
            self.chunk_reuse = _build_chunk_reuse(config, self.model, self.tokenizer)
        self._start_steps(f"torch-{config.id}")
        logger.info("torch engine loaded %s from %s on %s", self.model_id, path, self.device)

    def iter_tokens(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        entropies: list[float] | None = None,
        *,
        spec: SpecSetup | None = None,
        spec_stats: SpecStats | None = None,
        prefilled: Prefilled | None = None,
        shaper: OutputShaper | None = None,
    ) -> Generator[tuple[int, float], None, None]:
        """Yield (token id, seconds the forward pass took). Stops at max_tokens or EOS (yielded).
        With ``entropies``, the entropy of each step's distribution is appended to it (the plain loop
        runs then). With ``spec`` (a draft pair) and ``spec_stats``, decoding is speculative. ``prefilled``
        holds the prompt's KV and first logits when chunk-KV reuse computed them. ``shaper`` (penalties, a
        structured-output constraint, logprobs) works on each step's logits, so the plain loop runs then."""
        import torch
        from transformers import DynamicCache

        max_new = self._check_prompt(prompt_ids, params)
        gen: torch.Generator | None = None
        if not params.greedy:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % (2**63)))
        if spec is not None and spec_stats is not None and entropies is None and shaper is None:
            from services.workers.spec.decode import speculative_steps

            yield from speculative_steps(
                self.model,
                self.device,
                self._lock,
                prompt_ids,
                max_new,
                params,
                gen,
                spec,
                self.eos_ids,
                spec_stats,
                prefilled,
            )
            return
        cache = DynamicCache()
        inputs = torch.tensor([prompt_ids], device=self.device)
        for step in range(max_new):
            if step == 0 and prefilled is not None:
                cache, logits, spent = prefilled.cache, prefilled.logits.to("cpu"), prefilled.seconds
            else:
                with self._lock, torch.inference_mode():
                    start = time.perf_counter()
                    # Only the last position's logits are needed: the head over a whole prompt's positions is a
                    # quarter of a 550-token prefill on this CPU (logits_to_keep=1: 1.09 s against 1.47 s, SmolLM2).
                    out = self.model(input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    logits = out.logits[0, -1].to("cpu")
                    spent = time.perf_counter() - start
            if shaper is not None:
                token = sample_token(shaper.process(logits), params, gen)
                shaper.observe(token, logits)
            else:
                token = sample_token(logits, params, gen)
            if entropies is not None:
                logp = torch.log_softmax(logits.float(), dim=-1)
                entropies.append(float(-(logp.exp() * logp).sum()))
            yield token, spent
            if token in self.eos_ids:
                return
            inputs = torch.tensor([[token]], device=self.device)

    def stream_sync(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        spec: SpecSetup | None | bool = True,
        chunks: list[PromptChunk] | None = None,
        reuse: ReuseMode | None = None,
        fraction: float | None = None,
    ) -> Generator[GenerationChunk, None, None]:
        """The synchronous stream (the library path and the async wrapper both use it).

        ``spec``: True uses the worker's configured draft pair (if any), False or None decodes plainly,
        a ``SpecSetup`` uses that pair (benchmarks compare pairs in one process). ``chunks``: the
        retrieved texts in the prompt, whose stored KV the chunk-KV cache reuses when it is on;
        ``reuse`` (blend, prefix) and ``fraction`` override its mode and recompute fraction (benchmarks)."""
        from services.workers.spec.decode import SpecStats

        started = time.perf_counter()
        prompt_ids = self.encode(prompt)
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        detok = StopAwareDetokenizer(self.tokenizer, params.stop)
        finish: FinishReason = "length"
        setup = (self.spec if params.speculative else None) if spec is True else (spec or None)
        shaper = (
            OutputShaper(params, self.tokenizer, self.enforcer_tables, self.eos_ids)
            if OutputShaper.needed(params)
            else None
        )
        if shaper is not None:
            # Drafts are verified against unshaped logits: a shaped request decodes plainly.
            setup = None
        spec_stats = SpecStats() if setup is not None else None
        prefilled = None
        if self.chunk_reuse is not None and chunks and params.chunk_cache:
            import torch

            self._check_prompt(prompt_ids, params)
            mode = reuse or "blend"
            # The shared tier (Redis) is read before the step lock and written after it: a slow or dead
            # Redis delays this request alone, never the decode steps of every other.
            fetched = self.chunk_reuse.prefetch(prompt, chunks, mode=mode)
            with self._lock, torch.inference_mode():
                prefilled = self.chunk_reuse.prefill(prompt, chunks, mode=mode, fraction=fraction, fetched=fetched)
            self.chunk_reuse.store.flush_writes()
            prompt_ids = prefilled.prompt_ids
            stats.chunk_cache = prefilled.report
        steps = self.iter_tokens(
            prompt_ids, params, spec=setup, spec_stats=spec_stats, prefilled=prefilled, shaper=shaper
        )

        try:
            finish = yield from emit_tokens(steps, detok, stats, self.eos_ids, started, shaper)
        finally:
            steps.close()
            if prefilled is not None and prefilled.after is not None:
                with self._lock:
                    prefilled.after()
                assert self.chunk_reuse is not None
                self.chunk_reuse.store.flush_writes()
        if setup is not None and spec_stats is not None:
            stats.speculative = {**setup.describe(), **spec_stats.as_dict()}
        yield last_chunk(detok, finish, stats, shaper)

    def generate_with_signals_sync(self, prompt: str, params: SamplingParams) -> SignalResult:
        import torch

        started = time.perf_counter()
        prompt_ids = self.encode(prompt)
        entropies: list[float] = []
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        detok = StopAwareDetokenizer(self.tokenizer, params.stop)
        # DRAGIN's passes are unconstrained (the policy asks with plain params); penalties still apply.
        shaper = OutputShaper(params.plain(), self.tokenizer, None, self.eos_ids) if params.penalised else None
        steps = self.iter_tokens(prompt_ids, params, entropies, shaper=shaper)
        try:
            ids, text, finish = signal_tokens(steps, detok, stats, self.eos_ids, entropies, started)
        finally:
            steps.close()
        attention = None
        if ids:
            # The decode loop runs SDPA, which cannot return attention weights; one eager pass over
            # prompt + completion gives the last layer's weights for the completion rows.
            full = torch.tensor([prompt_ids + ids], device=self.device)
            with self._lock, torch.inference_mode():
                start = time.perf_counter()
                previous = self.model.config._attn_implementation
                self.model.set_attn_implementation("eager")
                try:
                    out = self.model(input_ids=full, output_attentions=True, use_cache=False)
                finally:
                    self.model.set_attn_implementation(previous)
                last = out.attentions[-1][0].mean(dim=0)  # (T, T), heads averaged
                attention = last[len(prompt_ids) :].float().cpu().numpy()
                stats.decode_s += time.perf_counter() - start
        tokens = [str(self.tokenizer.decode([t])) for t in prompt_ids + ids]
        return SignalResult(
            text=text,
            finish_reason=finish,
            token_ids=ids,
            tokens=tokens,
            prompt_len=len(prompt_ids),
            entropies=entropies[: len(ids)],
            attention=attention,
            stats=stats,
        )

    def close(self) -> None:
        self._steps.shutdown(wait=False, cancel_futures=True)
        if self.chunk_reuse is not None:
            self.chunk_reuse.store.close()
        self.model = None


def _build_chunk_reuse(config: ModelConfig, model: Any, tokenizer: Any) -> ChunkReuse:
    from cache.backends import chunk_cache_backend
    from cache.chunk_kv import model_fingerprint
    from cache.chunk_reuse import ChunkReuse
    from cache.kv_blend import UnsupportedModelError
    from services.errors import ConfigError

    cc = config.chunk_cache
    backend = chunk_cache_backend(cc.backend_url)
    try:
        return ChunkReuse(
            model,
            tokenizer,
            fingerprint=model_fingerprint(config.id, model.config, config.dtype),
            memory_bytes=cc.memory_bytes,
            policy=cc.eviction,
            backend=backend,
            ttl_s=cc.ttl_s,
            recompute_fraction=0.15 if cc.recompute_fraction is None else cc.recompute_fraction,
            min_chunk_tokens=cc.min_chunk_tokens,
            label=config.id,
        )
    except UnsupportedModelError as exc:
        raise ConfigError(f"models[{config.id}].chunk_cache: {exc}") from exc
