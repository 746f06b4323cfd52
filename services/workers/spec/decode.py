"""The speculative decode loop of the torch engine, and building a draft pair from config.

One round: the drafter proposes up to K tokens after the accepted sequence; the target scores the last
accepted token plus all drafts in one forward pass; verification keeps a prefix of the drafts and adds
the target's own next token; the target's KV cache is cut back to the accepted sequence (rejected drafts'
entries removed) and the drafter re-syncs its own cache on its next proposal.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.errors import ConfigError
from services.workers.model_store import describe
from services.workers.spec.adaptive import AcceptancePredictor, CandidateLength
from services.workers.spec.base import Draft, Drafter
from services.workers.spec.costs import WidthCosts
from services.workers.spec.draft_model import rollback
from services.workers.spec.verify import sample_token, target_probs, verify_greedy, verify_sampling

if TYPE_CHECKING:
    import torch

    from cache.chunk_reuse import Prefilled
    from retrieval.generation import SamplingParams
    from services.workers.config import SpeculativeConfig


_DRAFTS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()


@dataclass
class SpecStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    # (features, accepted?) for every drafted token the target judged, for fitting the predictor.
    samples: list[tuple[list[float], bool]] = field(default_factory=list)
    record_samples: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else 0.0,
            "mean_accepted_len": round(self.accepted / self.rounds, 4) if self.rounds else 0.0,
            "draft_s": round(self.draft_s, 6),
            "verify_s": round(self.verify_s, 6),
        }


@dataclass
class SpecSetup:
    """A draft pair's settings: a fresh drafter per request (drafters keep per-sequence caches) and
    the candidate-length rule."""

    label: str
    new_drafter: Callable[[], Drafter]
    max_k: int
    threshold: float | None = None
    predictor: AcceptancePredictor | None = None
    # The target's measured cost per verify width: verifies run padded to the cheapest width, and with
    # ``cost_rule`` the candidate length follows it (``costs.py``).
    costs: WidthCosts | None = None
    cost_rule: bool = False

    def length_rule(self, drafter: Drafter) -> CandidateLength:
        if self.cost_rule and self.costs is not None:
            return CandidateLength(
                self.max_k,
                None,
                self.predictor,
                prior=drafter.prior_acceptance,
                costs=self.costs,
                token_cost=getattr(drafter, "token_cost", None),
            )
        return CandidateLength(self.max_k, self.threshold, self.predictor, prior=drafter.prior_acceptance)

    def describe(self) -> dict[str, Any]:
        rule = CandidateLength(
            self.max_k, self.threshold, self.predictor, costs=self.costs if self.cost_rule else None
        ).describe()
        padded = self.costs.describe()["padded_width"] if self.costs is not None else None
        return {"drafter": self.label, **rule, "padded_width": padded}


def speculative_steps(
    model: Any,
    device: Any,
    lock: Any,
    prompt_ids: list[int],
    max_new: int,
    params: SamplingParams,
    gen: torch.Generator | None,
    setup: SpecSetup,
    eos_ids: set[int],
    stats: SpecStats,
    prefilled: Prefilled | None = None,
) -> Generator[tuple[int, float], None, None]:
    """Yield (token, seconds) like the plain loop; a round's time goes to its first token.
    ``prefilled``: the prompt's KV and first logits already computed (chunk-KV reuse)."""
    import torch
    from transformers import DynamicCache

    drafter = setup.new_drafter()
    length = setup.length_rule(drafter)
    ids = list(prompt_ids)
    if prefilled is not None:
        cache, first, spent = prefilled.cache, prefilled.logits.float().cpu(), prefilled.seconds
    else:
        cache = DynamicCache()
        with lock, torch.inference_mode():
            start = time.perf_counter()
            out = model(
                input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True, logits_to_keep=1
            )
            first = out.logits[0, -1].float().cpu()
            spent = time.perf_counter() - start
    token = sample_token(first, params, gen)
    produced = 1
    yield token, spent
    ids.append(token)
    while produced < max_new and token not in eos_ids:
        # The target's own token always comes out of a round, so k drafts fit when k + 1 <= room.
        k = min(setup.max_k, max_new - produced - 1)
        with lock, torch.inference_mode():
            start = time.perf_counter()
            length.start()
            draft = drafter.propose(ids, k, params, gen, length.keep_going) if k > 0 else Draft()
            verify_start = time.perf_counter()
            step = [ids[-1], *draft.tokens]
            width = len(step)
            if setup.costs is not None and width > 1:
                # Pad to the cheapest width: the extra positions come after the drafts (causal attention
                # keeps them out of the drafts' logits) and the rollback below drops their KV.
                step += [step[-1]] * (setup.costs.padded(width) - width)
            inputs = torch.tensor([step], device=device)
            out = model(input_ids=inputs, past_key_values=cache, use_cache=True)
            logits = out.logits[0, :width].float().cpu()
            if params.greedy:
                verdict = verify_greedy(logits, draft.tokens)
            else:
                verdict = verify_sampling(target_probs(logits, params), draft.q, draft.tokens, gen)
            rollback(cache, len(ids) + verdict.accepted)
            end = time.perf_counter()
        stats.rounds += 1
        stats.drafted += len(draft.tokens)
        stats.accepted += verdict.accepted
        stats.draft_s += verify_start - start
        stats.verify_s += end - verify_start
        if stats.record_samples:
            judged = draft.features[: verdict.accepted + 1]  # tokens after the first rejection were never judged
            stats.samples += [(f, i < verdict.accepted) for i, f in enumerate(judged)]
        spent = end - start
        for token in [*draft.tokens[: verdict.accepted], verdict.next_token]:
            yield token, spent
            spent = 0.0
            ids.append(token)
            produced += 1
            if token in eos_ids or produced >= max_new:
                return


def build_setup(
    spec: SpeculativeConfig,
    target: Any,
    device: Any,
    cache_dir: str,
    *,
    target_tokenizer: Any = None,
    target_name: str = "target",
) -> SpecSetup:
    """The draft pair a worker's config asks for (validated by the config model already). With
    ``target_tokenizer``, a draft model's tokenizer is compared with it token by token."""
    from services.workers.spec.costs import draft_token_cost, measure
    from services.workers.spec.draft_model import DraftModelDrafter
    from services.workers.spec.hybrid import HybridDrafter
    from services.workers.spec.ngram import NgramDrafter
    from services.workers.spec.self_draft import SelfDrafter

    new_drafter: Callable[[], Drafter]
    if spec.method == "hybrid":
        draft = load_draft_model(
            spec.model, target, device, cache_dir, target_tokenizer=target_tokenizer, target_name=target_name
        )
        token_cost = draft_token_cost(draft, target, device)
        model_label = f"draft_model({describe(spec.model)})"
        label = f"hybrid(ngram({spec.prompt_lookup_min}-{spec.prompt_lookup_max}), {model_label})"

        def new_drafter() -> Drafter:
            return HybridDrafter(
                NgramDrafter(spec.prompt_lookup_max, spec.prompt_lookup_min),
                DraftModelDrafter(draft, device, label=model_label),
                token_cost,
            )

        names: tuple[str, ...] = HybridDrafter.feature_names
    elif spec.method == "ngram":
        label = f"ngram({spec.prompt_lookup_min}-{spec.prompt_lookup_max})"

        def new_drafter() -> Drafter:
            return NgramDrafter(spec.prompt_lookup_max, spec.prompt_lookup_min)

        names = NgramDrafter.feature_names
    elif spec.method == "self_draft":
        probe = SelfDrafter(target, device, spec.self_draft_layers)  # validates the layer count once
        shallow, label = probe.model, probe.label

        def new_drafter() -> Drafter:
            return DraftModelDrafter(shallow, device, label=label)

        names = DraftModelDrafter.feature_names
    else:
        draft = load_draft_model(
            spec.model, target, device, cache_dir, target_tokenizer=target_tokenizer, target_name=target_name
        )
        label = f"draft_model({describe(spec.model)})"

        def new_drafter() -> Drafter:
            return DraftModelDrafter(draft, device, label=label)

        names = DraftModelDrafter.feature_names
    predictor = None
    if spec.adaptive and spec.predictor:
        predictor = AcceptancePredictor.load(spec.predictor, spec.method, names)
    threshold = spec.stop_threshold if spec.adaptive else None
    # Padding may go past K + 1 (on this CPU a width of 4 is cheaper than 3), so measure up to 8 at least.
    costs = measure(target, device, max(8, spec.num_speculative_tokens + 1)) if spec.pad_verify else None
    cost_rule = spec.adaptive and spec.stop_rule == "cost"
    return SpecSetup(label, new_drafter, spec.num_speculative_tokens, threshold, predictor, costs, cost_rule)


def load_draft_model(
    path: str | None,
    target: Any,
    device: Any,
    cache_dir: str,
    *,
    target_tokenizer: Any = None,
    target_name: str = "target",
) -> Any:
    """A draft model must share the target's vocabulary (token ids are compared one to one)."""
    from transformers import AutoModelForCausalLM

    from services.workers.model_store import resolve_model_path
    from services.workers.spec.pairing import check_draft_folder

    folder = resolve_model_path(path, cache_dir)
    if target_tokenizer is not None:
        check_draft_folder(target_tokenizer, folder, target_name=target_name, draft_name=describe(path))
    # One copy of a draft model per target (drafters keep their own KV caches): setups that share a draft,
    # as the benchmark's many do, share its weights.
    loaded = _DRAFTS.setdefault(target, {})
    key = (str(folder), str(device))
    if key in loaded:
        return loaded[key]
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=target.dtype).to(device).eval()
    draft_vocab = model.get_output_embeddings().weight.shape[0]
    target_vocab = target.get_output_embeddings().weight.shape[0]
    if draft_vocab != target_vocab:
        raise ConfigError(
            f"draft model {Path(folder).name} has a vocabulary of {draft_vocab}, the target {target_vocab}: "
            "a draft model needs the target's tokenizer"
        )
    loaded[key] = model
    return model
