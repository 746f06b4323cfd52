"""Calibration of the SLA controller's latency predictions against what answers really took.

The load model is an idealisation (fair sharing, while the torch worker serves higher priorities first and
slows down beyond fair sharing as requests pile up on two cores). Its errors are corrected by scaling a
priority's predictions with the 90th percentile of its recent observed / predicted ratios (all priorities
pooled until it has 10), never below 1 and at most 4. A ratio counts for ``ttl_s``: when every request is
shed no new ones arrive, and an old burst of misses must not keep the factor up (and the tier shed) for ever.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

RATIO_TTL_S = 120.0  # how long an observed / predicted latency ratio counts


class LatencyCalibration:
    def __init__(
        self, *, ttl_s: float = RATIO_TTL_S, window: int = 100, min_ratios: int = 10, quantile: float = 0.9
    ) -> None:
        self.ttl_s = ttl_s
        self.window = window
        self.min_ratios = min_ratios
        self.quantile = quantile
        # (when, observed / predicted) per priority, newest last.
        self.ratios: dict[int, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=window))

    def observe(self, priority: int, observed_s: float, predicted_s: float) -> None:
        if predicted_s > 0:
            self.ratios[priority].append((time.monotonic(), observed_s / predicted_s))

    def replace(self, ratios: list[tuple[float, int, float]]) -> None:
        """Take the shared ratios, (seconds ago, priority, ratio) oldest first, for this router's own (every
        router's observations are in the shared list, its own included)."""
        now = time.monotonic()
        fresh: dict[int, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=self.window))
        for ago, priority, ratio in ratios:
            if ago <= self.ttl_s:
                fresh[priority].append((now - ago, ratio))
        self.ratios = fresh

    def factor(self, priority: int | None = None) -> float:
        """What this priority's predictions are multiplied by (1.0 until there are enough ratios)."""
        since = time.monotonic() - self.ttl_s
        recent = {p: [r for t, r in q if t >= since] for p, q in self.ratios.items()}
        own = recent.get(priority) if priority is not None else None
        ratios = own if own is not None and len(own) >= self.min_ratios else [r for q in recent.values() for r in q]
        if len(ratios) < self.min_ratios:
            return 1.0
        ordered = sorted(ratios)
        return min(4.0, max(1.0, ordered[int(self.quantile * (len(ordered) - 1))]))

    def by_priority(self) -> dict[int, float]:
        return {p: round(self.factor(p), 3) for p in sorted(self.ratios)}
