"""Latency priors: what the SLA controller assumes of a plan it has not yet seen answer (p95 and p50
latency, p95 time to first token, mean tokens), per model and policy, measured and shipped as an
artifact (`ragyard build-priors` from a `bench policies` run's predictions) instead of constants in code.

A plan the artifact lacks takes the slowest measured policy of its model (then of any model): unknown
work is assumed expensive, so the controller never admits it on an optimistic guess. Without an
artifact, every plan takes FALLBACK, a deliberately slow guess, until it has been observed."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.artifact_io import read_json, write_json
from router.errors import RouterArtifactError

FORMAT = 1
FIELDS = ("latency_s", "p50_s", "ttft_s", "prompt_tokens", "completion_tokens")
# Used only without an artifact: the slowest plan measured on this 2-core CPU before the artifact
# existed (`multi` on SmolLM2-135M, results/policies).
FALLBACK = {"latency_s": 13.0, "p50_s": 7.22, "ttft_s": 9.0, "prompt_tokens": 1402.0, "completion_tokens": 42.0}


def _p95(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def build_priors(rows: Iterable[dict[str, Any]], *, source: str = "") -> dict[str, Any]:
    """The artifact's content from answered questions: each row needs model, policy, latency_s,
    prompt_tokens, completion_tokens and timings.decode_s (a `bench policies` predictions.jsonl row).
    Rows of routed setups (``adaptive``, the oracle) are left out: they mix plans."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        setup = str(r.get("setup", ""))
        if r.get("policy") in (None, "adaptive") or setup in ("oracle",) or setup.startswith("auto/"):
            continue
        groups[(str(r["model"]), str(r["policy"]))].append(r)
    priors: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (model, policy), rs in sorted(groups.items()):
        latency = [float(r["latency_s"]) for r in rs]
        # Time to the first token of the answer the client sees, as the controller observes it for a plain
        # request: everything but the final decode (a multi-step answer's first token comes after its steps).
        ttft = [max(0.0, float(r["latency_s"]) - float(r.get("timings", {}).get("decode_s", 0.0))) for r in rs]
        priors[model][policy] = {
            "latency_s": round(_p95(latency), 4),
            "p50_s": round(statistics.median(latency), 4),
            "ttft_s": round(_p95(ttft), 4),
            "prompt_tokens": round(statistics.fmean(float(r["prompt_tokens"]) for r in rs), 1),
            "completion_tokens": round(statistics.fmean(float(r["completion_tokens"]) for r in rs), 1),
            "n": len(rs),
        }
    return {"format": FORMAT, "source": source, "priors": {m: dict(v) for m, v in priors.items()}}


@dataclass
class LatencyPriors:
    priors: dict[str, dict[str, dict[str, float]]]
    source: str = ""

    def get(self, model: str, policy: str) -> tuple[dict[str, float], str]:
        """The prior for a plan and where it came from: ``prior`` (measured for this model and policy) or
        ``prior:slowest`` (this model's slowest measured policy, else any model's)."""
        by_policy = self.priors.get(model, {})
        if policy in by_policy:
            return by_policy[policy], "prior"
        pool = list(by_policy.values()) or [p for ps in self.priors.values() for p in ps.values()]
        if not pool:
            return FALLBACK, "prior:fallback"
        return max(pool, key=lambda p: p["latency_s"]), "prior:slowest"

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"format": FORMAT, "source": self.source, "priors": self.priors})

    @classmethod
    def from_content(cls, content: dict[str, Any]) -> LatencyPriors:
        return cls(content["priors"], str(content.get("source", "")))

    @classmethod
    def load(cls, path: str | Path) -> LatencyPriors:
        content = read_json(path, "latency priors", FORMAT, "ragyard build-priors")
        priors = content.get("priors")
        ok = isinstance(priors, dict)
        if ok and isinstance(priors, dict):
            for by_policy in priors.values():
                ok = ok and isinstance(by_policy, dict)
                for p in by_policy.values() if isinstance(by_policy, dict) else ():
                    ok = ok and all(isinstance(p.get(f), int | float) and p[f] >= 0 for f in FIELDS)
        if not ok:
            raise RouterArtifactError(
                f"latency priors {path} are malformed: they need format {FORMAT} and "
                f"priors[model][policy] with {', '.join(FIELDS)} (non-negative numbers)"
            )
        return cls.from_content(content)
