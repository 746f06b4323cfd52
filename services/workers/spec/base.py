"""What every drafter gives the speculative loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from retrieval.generation import SamplingParams

# Called after each drafted token with that token's acceptance features; False stops drafting.
KeepGoing = Callable[[list[float]], bool]


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    # The distribution each token was drawn from (None: proposed deterministically, i.e. one-hot).
    q: list[torch.Tensor | None] = field(default_factory=list)
    # Per-token features the adaptive candidate length predicts acceptance from.
    features: list[list[float]] = field(default_factory=list)


class Drafter(Protocol):
    name: str
    feature_names: tuple[str, ...]

    def propose(
        self,
        context: list[int],
        max_k: int,
        params: SamplingParams,
        gen: torch.Generator | None,
        keep_going: KeepGoing,
    ) -> Draft:
        """Up to ``max_k`` tokens likely to follow ``context`` (prompt plus accepted output)."""

    def prior_acceptance(self, features: list[float]) -> float:
        """Acceptance probability to assume before a predictor is fitted."""

    def reset(self) -> None:
        """Forget per-sequence state (a new request starts)."""
