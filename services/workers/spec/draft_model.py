"""A draft model with the target's tokenizer: a smaller model (or the target's own first layers, see
``self_draft``) drafts autoregressively from its own KV cache.

The draft cache follows the accepted sequence: before drafting, it is cut back to the longest prefix it
shares with the context (rejected drafts leave it), and the missing tokens are fed in one pass.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from services.workers.spec.base import Draft, KeepGoing
from services.workers.spec.verify import target_probs

if TYPE_CHECKING:
    import torch

    from retrieval.generation import SamplingParams


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def rollback(cache: Any, keep: int) -> None:
    """Drop cached positions past ``keep``. A negative count means "remove that many" in both the
    4.x and 5.x transformers cache APIs."""
    extra = cache.get_seq_length() - keep
    if extra > 0:
        cache.crop(-extra)


class DraftModelDrafter:
    name = "draft_model"
    feature_names: tuple[str, ...] = ("log_q", "entropy_q", "position")

    def __init__(self, model: Any, device: Any, label: str | None = None) -> None:
        self.model = model
        self.device = device
        self.label = label or self.name
        self.cache: Any = None
        self.cached: list[int] = []

    @staticmethod
    def prior_acceptance(features: list[float]) -> float:
        return math.exp(features[0])  # the draft's own probability of its token

    def reset(self) -> None:
        self.cache, self.cached = None, []

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        import torch

        out = self.model(
            input_ids=torch.tensor([tokens], device=self.device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cached += tokens
        return out.logits[0, -1].float().cpu()

    def propose(
        self,
        context: list[int],
        max_k: int,
        params: SamplingParams,
        gen: torch.Generator | None,
        keep_going: KeepGoing,
    ) -> Draft:
        import torch
        from transformers import DynamicCache

        draft = Draft()
        if max_k <= 0:
            return draft
        with torch.inference_mode():
            if self.cache is None:
                self.cache, self.cached = DynamicCache(), []
            keep = min(common_prefix(self.cached, context), len(context) - 1)
            rollback(self.cache, keep)
            self.cached = self.cached[:keep]
            logits = self._feed(context[keep:])
            for position in range(max_k):
                if params.greedy:
                    probs = torch.softmax(logits, dim=-1)
                    token = int(torch.argmax(logits).item())
                    q = None
                else:
                    probs = target_probs(logits, params)
                    token = int(torch.multinomial(probs, 1, generator=gen).item())
                    q = probs
                p_token = float(probs[token])
                logp = torch.log(probs.clamp_min(1e-12))
                entropy = float(-(probs * logp).sum())
                features = [math.log(max(p_token, 1e-12)), entropy, float(position)]
                draft.tokens.append(token)
                draft.q.append(q)
                draft.features.append(features)
                if position + 1 == max_k or not keep_going(features):
                    break
                logits = self._feed([token])
        return draft
