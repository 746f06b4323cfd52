"""Candidate length: a fixed K, or SpecDec++'s adaptive rule (arXiv 2405.19715).

SpecDec++ treats drafting as a stopping problem: after each drafted token, predict the probability that
the target accepts it; stop once the predicted probability that at least one drafted token so far is
rejected, 1 - prod(a_i), passes a threshold. The acceptance predictor here is a logistic regression over
the drafter's own per-token features (a draft model: log-probability and entropy of its distribution and
the position; prompt lookup: match length and position), fitted on real prompts by
``ragyard bench spec`` and stored as a small JSON file per drafter. Without a fitted predictor the
drafter's prior stands in: a draft model's own probability of its token, or for prompt lookup
n/(n+1) for a match of n tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class AcceptancePredictor:
    drafter: str
    feature_names: tuple[str, ...]
    weights: list[float]
    bias: float
    samples: int = 0

    def predict(self, features: list[float]) -> float:
        z = self.bias + sum(w * f for w, f in zip(self.weights, features, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "drafter": self.drafter,
            "feature_names": list(self.feature_names),
            "weights": self.weights,
            "bias": self.bias,
            "samples": self.samples,
        }
        path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, drafter: str, feature_names: tuple[str, ...]) -> AcceptancePredictor:
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
            pred = cls(
                drafter=str(body["drafter"]),
                feature_names=tuple(body["feature_names"]),
                weights=[float(w) for w in body["weights"]],
                bias=float(body["bias"]),
                samples=int(body.get("samples", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"acceptance predictor {path}: unreadable ({exc})") from exc
        if pred.drafter != drafter or pred.feature_names != feature_names:
            raise ValueError(
                f"acceptance predictor {path} was fitted for {pred.drafter} {list(pred.feature_names)}, "
                f"not {drafter} {list(feature_names)}"
            )
        return pred


def fit_predictor(
    drafter: str, feature_names: tuple[str, ...], rows: list[list[float]], accepted: list[bool]
) -> AcceptancePredictor:
    """Logistic regression of acceptance on the drafter's features (class-balanced is not wanted: the
    rule needs calibrated probabilities, so plain maximum likelihood)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if len(set(accepted)) < 2:
        # Every token accepted (or none): a constant predictor at the observed rate, kept off 0 and 1.
        rate = (sum(accepted) + 0.5) / (len(accepted) + 1.0)
        return AcceptancePredictor(
            drafter, feature_names, [0.0] * len(feature_names), math.log(rate / (1 - rate)), len(rows)
        )
    model = LogisticRegression(C=1.0, max_iter=1000)
    model.fit(np.asarray(rows, dtype=float), np.asarray(accepted, dtype=int))
    return AcceptancePredictor(
        drafter, feature_names, [float(w) for w in model.coef_[0]], float(model.intercept_[0]), len(rows)
    )


def best_future_rate(
    accepted: float, expected: float, spent: float, k: int, max_k: int, a: float, token_cost: float, verify: Any
) -> float:
    """The best expected tokens per unit cost of drafting on from ``k`` tokens to any k' <= ``max_k``:
    each further token is accepted with probability ``a`` times the previous one's (geometric), costs
    ``token_cost`` to draft, and the round's verify costs ``verify(k' + 1)``."""
    best = 0.0
    p = accepted
    for k2 in range(k + 1, max_k + 1):
        p *= a
        expected += p
        spent += token_cost
        best = max(best, expected / (spent + verify(k2 + 1)))
    return best


class CandidateLength:
    """Decides how many tokens one drafting round may propose.

    Rules: a fixed K (``threshold`` and ``costs`` None); SpecDec++'s threshold (stop once P(some drafted
    token is rejected) passes ``threshold``); or the cost-aware rule (``costs``, a ``WidthCosts``): after
    each drafted token, stop unless a longer draft promises more expected tokens (1 + the sum of the
    drafts' cumulative acceptance probabilities) per unit of cost (the drafts' own cost, from
    ``token_cost``, plus the verify at its width) than stopping now.
    """

    def __init__(
        self,
        max_k: int,
        threshold: float | None = None,
        predictor: AcceptancePredictor | None = None,
        prior: Callable[[list[float]], float] | None = None,
        *,
        costs: Any = None,
        token_cost: Callable[[list[float]], float] | None = None,
    ) -> None:
        if max_k < 1:
            raise ValueError("num_speculative_tokens must be at least 1")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError("the adaptive stop threshold must be between 0 and 1")
        self.max_k = max_k
        self.threshold = threshold
        self.predictor = predictor
        self.prior = prior
        self.costs = costs
        self.token_cost = token_cost
        self.start()

    @property
    def adaptive(self) -> bool:
        return self.threshold is not None or self.costs is not None

    @property
    def rule(self) -> str:
        return "cost" if self.costs is not None else "threshold" if self.threshold is not None else "fixed"

    def describe(self) -> dict[str, Any]:
        return {
            "k": self.max_k,
            "adaptive": self.adaptive,
            "rule": self.rule,
            "threshold": self.threshold,
            "predictor": "fitted" if self.predictor else ("drafter prior" if self.adaptive else None),
        }

    def start(self) -> None:
        self._all_accepted = 1.0
        self._expected = 1.0  # the target's own token always comes out of a round
        self._spent = 0.0
        self._k = 0

    def acceptance(self, features: list[float]) -> float:
        if self.predictor is not None:
            return self.predictor.predict(features)
        return self.prior(features) if self.prior is not None else 1.0

    def keep_going(self, features: list[float]) -> bool:
        if self.costs is not None:
            return self._worth_more(features)
        if self.threshold is None:
            return True
        self._all_accepted *= self.acceptance(features)
        return 1.0 - self._all_accepted <= self.threshold

    def _worth_more(self, features: list[float]) -> bool:
        a = self.acceptance(features)
        cost = self.token_cost(features) if self.token_cost is not None else 0.0
        self._all_accepted *= a
        self._expected += self._all_accepted
        self._spent += cost
        self._k += 1
        now = self._expected / (self._spent + self.costs.cost(self._k + 1))
        later = best_future_rate(
            self._all_accepted, self._expected, self._spent, self._k, self.max_k, a, cost, self.costs.cost
        )
        return later > now
