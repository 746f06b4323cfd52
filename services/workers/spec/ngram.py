"""Prompt lookup: draft the tokens that followed the latest earlier occurrence of the context's last n
tokens (longest n first). RAG answers often copy passage text, so matches are common and drafting is
free (no model runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.workers.spec.base import Draft, KeepGoing

if TYPE_CHECKING:
    import torch

    from retrieval.generation import SamplingParams


def lookup(context: list[int], max_n: int, min_n: int, max_k: int) -> tuple[list[int], int]:
    """The continuation after the most recent earlier match of the longest suffix n-gram, and n."""
    for n in range(min(max_n, len(context) - 1), min_n - 1, -1):
        suffix = context[-n:]
        # Scan right to left: the latest occurrence is the most relevant (it is nearest the answer).
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == suffix:
                follow = context[start + n : start + n + max_k]
                if follow:
                    return follow, n
    return [], 0


class NgramDrafter:
    name = "ngram"
    feature_names: tuple[str, ...] = ("match_len", "position")

    def __init__(self, max_n: int = 3, min_n: int = 1) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"ngram sizes need 1 <= min <= max, got min {min_n}, max {max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.label = f"ngram({min_n}-{max_n})"

    @staticmethod
    def prior_acceptance(features: list[float]) -> float:
        return features[0] / (features[0] + 1.0)  # longer matches are likelier to continue

    def reset(self) -> None:
        pass

    def propose(
        self,
        context: list[int],
        max_k: int,
        params: SamplingParams,
        gen: torch.Generator | None,
        keep_going: KeepGoing,
    ) -> Draft:
        draft = Draft()
        follow, n = lookup(context, self.max_n, self.min_n, max_k) if max_k > 0 else ([], 0)
        for position, token in enumerate(follow):
            features = [float(n), float(position)]
            draft.tokens.append(token)
            draft.q.append(None)
            draft.features.append(features)
            if not keep_going(features):
                break
        return draft
