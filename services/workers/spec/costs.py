"""What one target forward of w new tokens costs on this machine, measured once per model.

On a CPU the cost of a verify pass is not linear in its width, and not even monotonic: MKL multiplies a
single row by a matrix-vector kernel and a few rows by its general kernel, which is slow for 2 or 3 rows.
Measured here (2 cores, Qwen2.5-Coder-1.5B, fp32, 550-token context, relative to one token): width 2
costs 2.2, width 3 3.5, width 5 2.2, width 8 2.0. Two consequences the speculative loop uses:

- **padding**: a verify of width w runs at the cheapest width w' >= w (extra positions are repeated
  tokens after the drafts; causal attention keeps them from changing the drafts' logits, and the KV
  rollback drops them); and
- **the cost-aware stop rule** (``CandidateLength`` with ``stop_rule: cost``): keep drafting while some
  longer draft promises more expected tokens per unit of cost, where a drafted token costs what the
  drafter costs (nothing for prompt lookup, a draft-model forward otherwise) and the verify costs
  ``cost(k + 1)``.

No library measures this (it is a property of the machine and the model), hence this small module.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

_MEASURED: weakref.WeakKeyDictionary[Any, WidthCosts] = weakref.WeakKeyDictionary()
_RATIOS: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class WidthCosts:
    """``seconds[w - 1]``: one forward of ``w`` new tokens after a short cached context."""

    seconds: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.seconds or min(self.seconds) <= 0:
            raise ValueError("width costs need a positive time for every width")

    @property
    def max_width(self) -> int:
        return len(self.seconds)

    def padded(self, width: int) -> int:
        """The cheapest width at least ``width`` (the smallest such on a tie); beyond what was measured,
        the width itself."""
        if width >= self.max_width:
            return width
        return min(range(width, self.max_width + 1), key=lambda w: (self.seconds[w - 1], w))

    def cost(self, width: int) -> float:
        """Cost of verifying ``width`` tokens (padded), in single-token forwards."""
        w = self.padded(width)
        if w > self.max_width:  # beyond the table: grow linearly from its last entry
            return self.seconds[-1] / self.seconds[0] * w / self.max_width
        return self.seconds[w - 1] / self.seconds[0]

    def describe(self) -> dict[str, Any]:
        return {
            "relative_cost_by_width": [round(s / self.seconds[0], 3) for s in self.seconds],
            "padded_width": [self.padded(w) for w in range(1, self.max_width + 1)],
        }


def forward_seconds(model: Any, device: Any, widths: range, *, context: int = 64, reps: int = 3) -> list[float]:
    """The fastest of ``reps`` timings of one forward per width, after a cached ``context``-token prefix
    (widths interleaved across repetitions, so a noisy spell does not land on one width)."""
    import torch
    from transformers import DynamicCache

    vocab = int(model.get_output_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(10, max(11, vocab // 4), (1, context), generator=gen).to(device)
    best = {w: float("inf") for w in widths}
    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
        for _ in range(reps):
            for w in widths:
                step = torch.randint(10, max(11, vocab // 4), (1, w), generator=gen).to(device)
                start = time.perf_counter()
                model(input_ids=step, past_key_values=cache, use_cache=True)
                if device is not None and str(device).startswith("cuda"):
                    torch.cuda.synchronize()
                best[w] = min(best[w], time.perf_counter() - start)
                cache.crop(-w)
    return [best[w] for w in widths]


def measure(model: Any, device: Any, max_width: int) -> WidthCosts:
    """The model's width costs up to ``max_width``, measured once per model object (a few seconds)."""
    known = _MEASURED.get(model)
    if known is not None and known.max_width >= max_width:
        return known
    costs = WidthCosts(tuple(forward_seconds(model, device, range(1, max_width + 1))))
    _MEASURED[model] = costs
    return costs


def draft_token_cost(draft: Any, target: Any, device: Any) -> float:
    """One draft-model forward of one token, in target forwards of one token (measured once per pair)."""
    known = _RATIOS.setdefault(target, {}).get(id(draft))
    if known is not None:
        return known
    d, t = forward_seconds(draft, device, range(1, 2)), forward_seconds(target, device, range(1, 2))
    _RATIOS[target][id(draft)] = d[0] / t[0]
    return d[0] / t[0]
