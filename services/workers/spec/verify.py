"""Verification of drafted tokens against the target model.

Greedy: accept drafted tokens while each equals the target's argmax; the first mismatch is replaced by
the target's token (so the output is exactly the target's greedy output). Sampling: the standard
speculative-sampling rule (Leviathan et al. 2023; Chen et al. 2023): accept token x drafted from q with
probability min(1, p(x)/q(x)); on rejection draw from normalise(max(p - q, 0)). Either way one token
more than the accepted drafts comes out of every target pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from retrieval.generation import SamplingParams


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution the engine samples from: temperature, then nucleus (top-p) truncation.
    ``logits`` may be (V,) or (N, V); rows are normalised."""
    import torch

    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_token(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    """The engine's token choice from one step's logits: argmax when greedy, else a draw from
    ``target_probs``."""
    import torch

    if params.greedy:
        return int(torch.argmax(logits).item())
    return int(torch.multinomial(target_probs(logits, params), 1, generator=gen).item())


@dataclass(frozen=True)
class Verdict:
    accepted: int  # drafted tokens kept
    next_token: int  # the target's own token after them (correction or bonus)


def verify_greedy(logits: torch.Tensor, drafted: list[int]) -> Verdict:
    """``logits`` (k+1, V): row i is the target's prediction after drafted[:i]."""
    import torch

    choices = torch.argmax(logits, dim=-1).tolist()
    n = 0
    while n < len(drafted) and drafted[n] == choices[n]:
        n += 1
    return Verdict(n, int(choices[n]))


def verify_sampling(
    p: torch.Tensor, q: list[torch.Tensor | None], drafted: list[int], gen: torch.Generator | None
) -> Verdict:
    """``p`` (k+1, V): the target's distributions; ``q[i]`` the distribution drafted[i] was drawn from
    (None: the drafter proposed it deterministically, q is one-hot on it)."""
    import torch

    for i, token in enumerate(drafted):
        p_x = float(p[i, token])
        q_x = 1.0 if q[i] is None else float(q[i][token])  # type: ignore[index]
        u = float(torch.rand((), generator=gen))
        if q_x > 0 and u < min(1.0, p_x / q_x):
            continue
        if q[i] is None:
            residual = p[i].clone()
            residual[token] = 0.0
        else:
            residual = torch.clamp(p[i] - q[i], min=0.0)  # type: ignore[operator]
        total = float(residual.sum())
        if total <= 0.0:  # p == q up to rounding: any draw from p is exact
            residual, total = p[i], float(p[i].sum())
        return Verdict(i, int(torch.multinomial(residual / total, 1, generator=gen).item()))
    last = p[len(drafted)]
    return Verdict(len(drafted), int(torch.multinomial(last, 1, generator=gen).item()))
