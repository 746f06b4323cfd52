"""llama.cpp through llama-cpp-python: the embedded default engine on CPU.

It reads the catalog's 4-bit GGUF files as they are (no fp32 conversion), so a decoded token reads about
a quarter of the bytes the torch engine's dequantised copy does: 6-9x the decode speed on this CPU
(README, `ragyard bench engines`). The loop is Ragyard's own, as on torch: per-stage timings, stop
strings on streamed text, requests interleaved step by step in one context (a KV sequence each) under the
SLA tiers' priority lock, prompt-lookup speculation verified greedily, logits shaped in Python
(penalties, logprobs) and llama.cpp's own grammar sampler for ``response_format``; chunk-KV reuse through
llama.cpp's per-sequence state (``llamacpp_chunks``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from core.chunks import PromptChunk
from retrieval.generation import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationStats,
    Precompute,
    SamplingParams,
    SignalResult,
)
from services.errors import ConfigError
from services.workers.engines.llamacpp_grammar import GrammarConstraint
from services.workers.engines.llamacpp_runtime import LlamaRuntime, LlamaTokenizer, closed_at_exit
from services.workers.engines.shaping import OutputShaper
from services.workers.engines.stepping import (
    SteppedEngine,
    StopAwareDetokenizer,
    emit_tokens,
    last_chunk,
    signal_tokens,
)
from services.workers.model_store import resolve_gguf
from services.workers.spec.ngram import lookup
from services.workers.spec.verify import sample_token
from services.workers.text import TokenizerMixin

if TYPE_CHECKING:
    import numpy as np
    import torch

    from services.workers.config import ModelConfig
    from services.workers.engines.llamacpp_chunks import LlamaChunkReuse, LlamaPrefill

logger = logging.getLogger(__name__)

# Sequences for the fresh tokens of a prompt's reused chunks, computed in one batch (more chunks: more batches).
BLEND_SEQS = 16

# Engines still open at exit are closed first (their background chunk thread joined, then the runtime closed under
# the step lock), before the runtimes' own hook and the interpreter's teardown.
_OPEN = closed_at_exit("a llama.cpp engine")


class _Slots:
    """The context's request sequences: a request holds one while it runs (its KV lives there)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._free = list(range(n))
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        return self.n - len(self._free)

    def acquire(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop(0)

    def release(self, seq: int) -> None:
        with self._cond:
            self._free.append(seq)
            self._cond.notify()


class LlamaCppEngine(SteppedEngine, TokenizerMixin):
    def __init__(self, config: ModelConfig, *, cache_dir: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        lc = config.llamacpp
        gguf = resolve_gguf(config.path, cache_dir)
        self.model_id = config.id
        self.max_model_len = config.max_model_len
        self.parallel = lc.parallel
        threads = lc.threads or max(1, os.cpu_count() or 1)
        # Sequences 0..parallel-1 hold requests; then one scratch sequence where a prompt's stored chunks are
        # restored and shifted, one where chunk states are computed in the background, and BLEND_SEQS where the
        # fresh tokens of a prompt's chunks are computed side by side in one batch (`LlamaChunkReuse.prefill`).
        self.runtime = LlamaRuntime(
            gguf,
            n_ctx=(lc.parallel + 1) * config.max_model_len,
            n_seq=lc.parallel + 2 + BLEND_SEQS,
            threads=threads,
            n_batch=lc.n_batch,
        )
        self.scratch_seq = lc.parallel
        self.ingest_seq = lc.parallel + 1
        self.blend_seqs = list(range(lc.parallel + 2, lc.parallel + 2 + BLEND_SEQS))
        self.tokenizer = LlamaTokenizer(self.runtime)
        self.eos_ids = set(self.runtime.eog_ids)
        template = self.runtime.metadata.get("tokenizer.chat_template")
        if not template:
            self.runtime.close()
            raise ConfigError(f"models[{config.id}]: the GGUF {gguf} carries no chat template")
        self._template = Jinja2ChatFormatter(template, eos_token="", bos_token="", add_generation_prompt=True)
        self.fingerprint = self.runtime.fingerprint(config.id)
        self.spec = config.speculative  # prompt lookup (ngram) only: the config refuses the others
        self._slots = _Slots(lc.parallel)
        self._start_steps(f"llamacpp-{config.id}")
        self.chunk_reuse: LlamaChunkReuse | None = None
        if config.chunk_cache.enabled:
            from services.workers.engines.llamacpp_chunks import build_chunk_reuse

            self.chunk_reuse = build_chunk_reuse(self, config)
        self.closed = False
        _OPEN.add(self)
        logger.info(
            "llama.cpp engine loaded %s from %s (%s, %d threads, %d sequences)",
            self.model_id,
            gguf,
            self.runtime.architecture,
            threads,
            lc.parallel,
        )

    # -- text -------------------------------------------------------------------------------------

    def render_chat(self, messages: list[ChatMessage]) -> str:
        rendered: Any = [m.model_dump() for m in messages]  # the formatter's TypedDicts are these dicts
        return str(self._template(messages=rendered).prompt)

    def encode(self, text: str) -> list[int]:
        return self.runtime.tokenize(text)

    # -- decoding ---------------------------------------------------------------------------------

    def _choose(
        self,
        logits: np.ndarray,
        params: SamplingParams,
        gen: torch.Generator | None,
        shaper: OutputShaper | None,
        grammar: GrammarConstraint | None,
    ) -> tuple[int, torch.Tensor]:
        import torch

        raw = torch.from_numpy(logits)
        shaped = shaper.process(raw) if shaper is not None else raw
        token = sample_token(shaped, params, gen)
        if grammar is not None and not grammar.allows(token):
            # The unconstrained choice broke the grammar: mask every token it refuses and choose again
            # (sampling then rejecting is the same draw as sampling the masked distribution).
            token = sample_token(grammar.mask(shaped), params, gen)
        if grammar is not None and token not in self.eos_ids:
            # The end of turn is only chosen where the grammar is complete; llama.cpp aborts the process
            # on an accepted end token otherwise, so it is never passed in (the answer ends with it anyway).
            grammar.accept(token)
        if shaper is not None:
            shaper.observe(token, raw)
        return token, raw

    def iter_tokens(
        self,
        seq: int,
        prompt_ids: list[int],
        params: SamplingParams,
        entropies: list[float] | None = None,
        *,
        shaper: OutputShaper | None = None,
        grammar: GrammarConstraint | None = None,
        speculate: bool = False,
        spec_stats: dict[str, float] | None = None,
        prefilled: LlamaPrefill | None = None,
    ) -> Generator[tuple[int, float], None, None]:
        """Yield (token id, seconds its model step took) for the prompt in sequence ``seq``: up to
        max_tokens, or the end of turn (yielded). ``prefilled``: chunk-KV reuse already holds the prompt's
        KV in ``seq`` and its last logits."""
        import torch

        max_new = self._check_prompt(prompt_ids, params)
        gen: torch.Generator | None = None
        if not params.greedy:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % (2**63)))
        rt = self.runtime
        if prefilled is not None:
            logits, spent = prefilled.logits, prefilled.seconds
        else:
            spent = 0.0
            # The prompt in n_batch pieces, the lock taken per piece: a long prefill yields to the decode
            # steps of higher tiers between pieces.
            for at in range(0, len(prompt_ids), rt.n_batch):
                with self._lock:
                    started = time.perf_counter()
                    logits = rt.decode(seq, prompt_ids[at : at + rt.n_batch], at)
                    spent += time.perf_counter() - started
        pos = len(prompt_ids)
        context = list(prompt_ids)
        produced = 0
        spec = self.spec if speculate else None
        while True:
            token, raw = self._choose(logits, params, gen, shaper, grammar)
            if entropies is not None:
                logp = torch.log_softmax(raw.float(), dim=-1)
                entropies.append(float(-(logp.exp() * logp).sum()))
            yield token, spent
            produced += 1
            if token in self.eos_ids or produced >= max_new:
                return
            context.append(token)
            drafts: list[int] = []
            if spec is not None:
                room = max_new - produced
                drafts, _ = lookup(
                    context, spec.prompt_lookup_max, spec.prompt_lookup_min, min(spec.num_speculative_tokens, room)
                )
            with self._lock:
                started = time.perf_counter()
                if not drafts:
                    logits = rt.decode(seq, [token], pos)
                    pos += 1
                    spent = time.perf_counter() - started
                    continue
                rows = rt.decode(seq, [token, *drafts], pos, rows="all")
                choices = rows.argmax(axis=-1)
                accepted = 0
                while accepted < len(drafts) and int(choices[accepted]) == drafts[accepted]:
                    accepted += 1
                # The rejected drafts' cells go; the accepted ones are the KV plain decoding would have.
                rt.seq_rm(seq, pos + 1 + accepted, -1)
                spent = time.perf_counter() - started
            assert spec_stats is not None
            spec_stats["rounds"] += 1
            spec_stats["drafted"] += len(drafts)
            spec_stats["accepted"] += accepted
            spec_stats["verify_s"] += spent
            share = spent / (accepted + 1)
            spent = share
            for d in drafts[:accepted]:
                yield d, share
                produced += 1
                context.append(d)
                if d in self.eos_ids or produced >= max_new:
                    return
            logits = rows[accepted]
            pos += 1 + accepted

    def _grammar(self, params: SamplingParams) -> GrammarConstraint | None:
        if params.response_format is None:
            return None
        return GrammarConstraint(self.runtime, params.response_format)

    def stream_sync(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        chunks: list[PromptChunk] | None = None,
        spec: bool = True,
        reuse: str | None = None,
        fraction: float | None = None,
    ) -> Generator[GenerationChunk, None, None]:
        """The synchronous stream. ``spec=False`` turns the configured prompt lookup off (benchmarks);
        ``reuse`` (blend, prefix) and ``fraction`` override the chunk cache's mode and recompute fraction."""
        started = time.perf_counter()
        prompt_ids = self.encode(prompt)
        self._check_prompt(prompt_ids, params)
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        detok = StopAwareDetokenizer(self.tokenizer, params.stop)
        grammar = self._grammar(params)
        plain = params.model_copy(update={"response_format": None}) if grammar is not None else params
        shaper = OutputShaper(plain, self.tokenizer, None, self.eos_ids) if OutputShaper.needed(plain) else None
        wants_spec = params.speculative and spec and self.spec is not None
        # Drafts are verified by argmax: a sampled, penalised, constrained or logprobs request decodes plainly.
        speculate = bool(wants_spec and params.greedy and shaper is None and grammar is None)
        spec_stats = {"rounds": 0, "drafted": 0, "accepted": 0, "verify_s": 0.0} if speculate else None
        seq = self._slots.acquire()
        steps: Generator[tuple[int, float], None, None] | None = None
        finish: FinishReason = "length"
        try:
            prefilled = None
            cache = self.chunk_reuse
            if cache is not None and chunks and params.chunk_cache:
                ids, spans, fetched = cache.prefetch(prompt, chunks)
                if spans:
                    with self._lock:
                        prefilled = cache.prefill(seq, ids, spans, fetched, fraction=fraction, mode=reuse or "blend")
                    cache.store.flush_writes()
                if prefilled is not None:
                    stats.chunk_cache = prefilled.report
            steps = self.iter_tokens(
                seq,
                prompt_ids,
                params,
                shaper=shaper,
                grammar=grammar,
                speculate=speculate,
                spec_stats=spec_stats,
                prefilled=prefilled,
            )
            finish = yield from emit_tokens(steps, detok, stats, self.eos_ids, started, shaper)
        finally:
            if steps is not None:
                steps.close()
            if grammar is not None:
                grammar.close()
            self._free(seq)
        if spec_stats is not None:
            assert self.spec is not None
            rounds, drafted, accepted = (int(spec_stats[k]) for k in ("rounds", "drafted", "accepted"))
            stats.speculative = {
                "method": "ngram",
                "num_speculative_tokens": self.spec.num_speculative_tokens,
                "rounds": rounds,
                "drafted": drafted,
                "accepted": accepted,
                "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
                "mean_accepted_len": round(accepted / rounds, 4) if rounds else 0.0,
                "verify_s": round(spec_stats["verify_s"], 6),
            }
        yield last_chunk(detok, finish, stats, shaper)

    def _free(self, seq: int) -> None:
        with self._lock:
            self.runtime.seq_rm(seq)
        self._slots.release(seq)

    def generate_with_signals_sync(self, prompt: str, params: SamplingParams) -> SignalResult:
        """A plain decode with each step's entropy. llama.cpp exposes no attention weights: DRAGIN's RIND
        runs on entropy alone here (``attention`` is None), as on vLLM."""
        started = time.perf_counter()
        prompt_ids = self.encode(prompt)
        self._check_prompt(prompt_ids, params)
        plain = params.plain()
        shaper = OutputShaper(plain, self.tokenizer, None, self.eos_ids) if plain.penalised else None
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        detok = StopAwareDetokenizer(self.tokenizer, params.stop)
        entropies: list[float] = []
        seq = self._slots.acquire()
        try:
            steps = self.iter_tokens(seq, prompt_ids, plain, entropies, shaper=shaper)
            try:
                ids, text, finish = signal_tokens(steps, detok, stats, self.eos_ids, entropies, started)
            finally:
                steps.close()
        finally:
            self._free(seq)
        tokens = [self.runtime.piece(t).decode("utf-8", errors="replace") for t in prompt_ids + ids]
        return SignalResult(
            text=text,
            finish_reason=finish,
            token_ids=ids,
            tokens=tokens,
            prompt_len=len(prompt_ids),
            entropies=entropies[: len(ids)],
            attention=None,
            stats=stats,
        )

    @property
    def busy(self) -> bool:
        """Whether a request is being answered (background work waits until none is)."""
        return self._slots.in_use > 0

    def precompute(self, chunks: list[PromptChunk]) -> Precompute:
        """Queue chunks for their KV to be computed in the background (ingest); never waits."""
        if self.chunk_reuse is None:
            return {"queued": 0, "enabled": False}
        return self.chunk_reuse.enqueue(chunks)

    def check_health(self) -> None:
        if self.closed:
            raise RuntimeError(f"the {self.model_id} engine is closed")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.chunk_reuse is not None:
            self.chunk_reuse.close()
        self._steps.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self.runtime.close()
