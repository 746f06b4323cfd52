"""Prompt lookup first, the draft model where lookup has nothing.

A RAG answer often copies its passages: there prompt lookup drafts for free and is accepted. Elsewhere
a draft model with the target's tokenizer drafts, at the cost of one of its forwards per token. A round
is one or the other; the features say which (``lookup`` is 1 for a looked-up token), so one acceptance
predictor and the cost-aware stop rule see both.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from services.workers.spec.base import Draft, KeepGoing
from services.workers.spec.draft_model import DraftModelDrafter
from services.workers.spec.ngram import NgramDrafter

if TYPE_CHECKING:
    import torch

    from retrieval.generation import SamplingParams


class HybridDrafter:
    name = "hybrid"
    feature_names: tuple[str, ...] = ("lookup", "match_len", "log_q", "entropy_q", "position")

    def __init__(self, lookup: NgramDrafter, model: DraftModelDrafter, model_token_cost: float) -> None:
        self.lookup, self.model = lookup, model
        self.model_token_cost = model_token_cost
        self.label = f"hybrid({lookup.label}, {model.label})"

    @staticmethod
    def prior_acceptance(features: list[float]) -> float:
        if features[0]:
            return NgramDrafter.prior_acceptance([features[1], features[4]])
        return math.exp(features[2])

    def token_cost(self, features: list[float]) -> float:
        return 0.0 if features[0] else self.model_token_cost

    def reset(self) -> None:
        self.lookup.reset()
        self.model.reset()

    def propose(
        self,
        context: list[int],
        max_k: int,
        params: SamplingParams,
        gen: torch.Generator | None,
        keep_going: KeepGoing,
    ) -> Draft:
        def from_lookup(f: list[float]) -> list[float]:
            return [1.0, f[0], 0.0, 0.0, f[1]]

        def from_model(f: list[float]) -> list[float]:
            return [0.0, 0.0, f[0], f[1], f[2]]

        draft = self.lookup.propose(context, max_k, params, gen, lambda f: keep_going(from_lookup(f)))
        if draft.tokens:
            draft.features = [from_lookup(f) for f in draft.features]
            return draft
        draft = self.model.propose(context, max_k, params, gen, lambda f: keep_going(from_model(f)))
        draft.features = [from_model(f) for f in draft.features]
        return draft
