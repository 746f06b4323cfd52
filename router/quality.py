"""The measured quality table: mean F1 per model × policy × complexity class, with each (model, policy)'s
measured cost, built from ladder runs (every training question answered by every model and policy) and
shipped as a JSON artifact beside the classifier.

Labels follow Adaptive-RAG with a model ladder: a question's class is that of the simplest policy that
some model answers correctly (none → A, single → B, multi → C), and its cheapest model is the cheapest
that does so with that policy; where nothing answers it, the dataset's inductive bias gives the class
(single-hop → B, multi-hop → C).

Routing (RouteLLM's cascade, inside the plan): among the candidate (model, policy) pairs, the expected
quality of each is Σ_c P(c | question) × table[model][policy][c]. Two rules pick among them:

- by gain per second (``per_second`` set, the default): the pair with the highest expected quality net of its
  time, ``quality - per_second × latency_s``. A slower pair wins only where each extra second buys at least
  ``per_second`` of expected F1, so `multi` must earn its time rather than win on a point of F1 at six times
  the latency;
- by margin: the cheapest pair whose expected quality is at least ``(1 - margin)`` of the best. The margin is
  relative, as the targets are ("97% of the best F1"): on a hard class every pair expects little, and an
  absolute margin of a few points there would admit a pair that expects half of the best.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired

from typing_extensions import TypedDict

from retrieval.policies.registry import label_ladder, policy_rank
from router.artifact_io import read_json, write_json
from router.errors import RouterArtifactError

CLASSES = ("A", "B", "C")
CORRECT_F1 = 0.5
FORMAT = 1


class LadderRun(TypedDict):
    """One question answered by one (model, policy) of the ladder (`ragyard ladder`'s runs.jsonl row)."""

    file: str
    id: str
    question: str
    hops: NotRequired[int | None]
    model: str
    policy: str
    em: float
    f1: float
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    mode: NotRequired[str]  # full (every pair answers) or cascade (later pairs only where earlier failed)
    prediction: NotRequired[str]
    llm_calls: NotRequired[int]


class LadderLabel(TypedDict, total=False):
    file: str
    id: str | None
    question: str
    hops: int | None
    label: str  # A, B or C
    source: str  # the policy that answered it, or "inductive bias"
    model: str | None  # the cheapest model that did; None by inductive bias
    tried: dict[str, dict[str, float]]  # by policy: the mean F1 the models got with it


def is_correct(em: float, f1: float) -> bool:
    return em >= 1.0 or f1 >= CORRECT_F1


def ladder_labels(runs: Iterable[LadderRun], model_cost: dict[str, float]) -> list[LadderLabel]:
    """One label per question from its runs (questions missing a policy's runs are still labelled by
    what they have; the ladder collector finishes one question's runs before the next)."""
    by_q: dict[tuple[str, str], list[LadderRun]] = defaultdict(list)
    for r in runs:
        by_q[(r["file"], r["id"])].append(r)
    out = []
    for (file, qid), rs in by_q.items():
        rec: LadderLabel = {"file": file, "id": qid, "question": rs[0]["question"], "hops": rs[0].get("hops")}
        for policy, label in label_ladder():
            correct = [r["model"] for r in rs if r["policy"] == policy and is_correct(r["em"], r["f1"])]
            if correct:
                rec["label"], rec["source"] = label, policy
                rec["model"] = min(correct, key=lambda m: model_cost.get(m, math.inf))
                break
        else:
            rec["label"] = "C" if (rec.get("hops") or 1) >= 2 else "B"
            rec["source"], rec["model"] = "inductive bias", None
        out.append(rec)
    return out


def _f1(r: LadderRun) -> float:
    return float(r["f1"])


def _latency(r: LadderRun) -> float:
    return float(r["latency_s"])


def _tokens(r: LadderRun) -> float:
    return float(r["prompt_tokens"] + r["completion_tokens"])


def build_table(runs: Iterable[LadderRun], *, version: str = "quality-v1") -> dict[str, Any]:
    """The artifact's content: table, costs, labels' counts, from ladder runs. Labels come from every
    question; the table and costs only from full-matrix runs (``mode`` full, or no mode: runs from before
    modes existed), since a cascade answers its later pairs only where the earlier ones failed, which would
    bias their cells low. A policy's runs count only on questions every model answered with it, so the
    models are compared on the same questions.

    Policies may be measured on different question sets (``collect-ladder --policies none,single`` on
    many questions, ``multi`` on few). Their raw means would then compare different questions: the few
    ``multi`` questions were easier, and ``multi`` looked 27 points better than ``single`` on class B
    where, on those same questions, it was 2 points better. So a policy measured on fewer questions is
    paired with one measured on the most (the nearest in retrieval rank): its cell is that reference's
    cell plus its mean paired difference from the reference on the questions both ran (per class; the
    overall paired difference where a class has none). Latency and tokens are adjusted the same way."""
    runs = list(runs)
    unbiased = [r for r in runs if r.get("mode", "full") != "cascade"]
    models_seen = {r["model"] for r in runs}
    by_qp: dict[tuple[str, Any, str], set[str]] = defaultdict(set)
    for r in unbiased:
        by_qp[(r["file"], r["id"], r["policy"])].add(r["model"])
    full = [r for r in unbiased if by_qp[(r["file"], r["id"], r["policy"])] == models_seen]
    run_of = {(r["model"], r["policy"], r["file"], r["id"]): r for r in full}
    questions: dict[str, set[tuple[str, Any]]] = defaultdict(set)
    for r in full:
        questions[r["policy"]].add((r["file"], r["id"]))
    most = max((len(qs) for qs in questions.values()), default=0)
    bases = [p for p, qs in questions.items() if len(qs) == most]

    def anchor(p: str) -> str:
        # The nearest policy in retrieval rank among those measured on the most questions: its answers
        # are the most like p's (multi's first step is single's retrieval), so the paired difference is
        # the smallest correction.
        if p in bases:
            return p
        return min(bases, key=lambda b: (abs(policy_rank(b) - policy_rank(p)), policy_rank(b), b))

    def mean(values: Iterable[float]) -> float:
        values = list(values)
        return sum(values) / len(values)

    def estimate(m: str, p: str, ref: str, level: set[Any], diff: set[Any], get: Callable[[Any], float]) -> float:
        """p's mean of ``get`` over ``level``; paired with ``ref`` (ref != p), ref's mean over ``level`` plus
        p's mean difference from ref over ``diff``, the questions both ran."""
        if ref == p:
            return mean(get(run_of[(m, p, *q)]) for q in level)
        shift = mean(get(run_of[(m, p, *q)]) - get(run_of[(m, ref, *q)]) for q in diff)
        return mean(get(run_of[(m, ref, *q)]) for q in level) + shift

    model_cost = {m: mean(float(r["latency_s"]) for r in full if r["model"] == m) for m in models_seen}
    labels = ladder_labels(runs, model_cost)
    label_of = {(r["file"], r["id"]): r["label"] for r in labels}

    def by_class(qs: set[Any]) -> dict[str, set[Any]]:
        return {c: {q for q in qs if label_of[q] == c} for c in CLASSES}

    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    cost: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    paired: dict[str, dict[str, Any]] = {}
    for p in sorted(questions, key=lambda p: (policy_rank(p), p)):
        own = questions[p]
        ref = anchor(p)
        shared = own & questions[ref]
        if ref != p and not shared:
            ref = p  # nothing to pair on: the policy's own means
        if ref != p:
            paired[p] = {"with": ref, "questions": len(shared)}
        base = questions[ref]
        # The level comes from the reference's questions of the class; a class with none falls back to all of
        # them. The shift comes from the shared questions of the class, or all shared ones.
        base_c, shared_c = by_class(base), by_class(shared if ref != p else own)
        for m in sorted(models_seen):
            table[m][p] = {
                c: round(min(1.0, max(0.0, estimate(m, p, ref, base_c[c] or base, shared_c[c] or shared, _f1))), 4)
                for c in CLASSES
            }
            counts[m][p] = {c: len(shared_c[c]) for c in CLASSES}
            cost[m][p] = {
                "latency_s": round(max(0.0, estimate(m, p, ref, base, shared, _latency)), 4),
                "tokens": round(max(0.0, estimate(m, p, ref, base, shared, _tokens)), 1),
                "n": len(shared),
            }
    label_counts = {c: sum(1 for r in labels if r["label"] == c) for c in CLASSES}
    return {
        "format": FORMAT,
        "version": version,
        "models": sorted(model_cost, key=lambda m: model_cost[m]),
        "table": {m: dict(v) for m, v in table.items()},
        "cost": {m: dict(v) for m, v in cost.items()},
        "cell_counts": {m: dict(v) for m, v in counts.items()},
        "label_counts": label_counts,
        "questions": len(labels),
        "questions_in_table": len({(r["file"], r["id"]) for r in full}),
        "questions_per_policy": {p: len(qs) for p, qs in sorted(questions.items())},
        "paired": dict(sorted(paired.items())),
        "files": sorted({r["file"] for r in labels}),
    }


def measured_quality(labels_path: Path) -> dict[str, dict[str, float]]:
    """Mean F1 per policy and complexity class on the router's training labels (each question's
    class, with the F1 of the policies its labelling tried). A cell never tried falls back to the
    policy's mean over every question it was tried on."""
    sums: dict[tuple[str, str], list[float]] = {}
    overall: dict[str, list[float]] = {}
    with labels_path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for policy, result in row.get("tried", {}).items():
                sums.setdefault((policy, row["label"]), []).append(float(result["f1"]))
                overall.setdefault(policy, []).append(float(result["f1"]))
    table: dict[str, dict[str, float]] = {}
    for policy, values in overall.items():
        mean = sum(values) / len(values)
        table[policy] = {
            c: round(sum(v) / len(v), 4) if (v := sums.get((policy, c))) else round(mean, 4) for c in CLASSES
        }
    return table


@dataclass
class Choice:
    model: str
    policy: str
    quality: float
    latency_s: float
    why_not: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "policy": self.policy,
            "expected_quality": round(self.quality, 4),
            "expected_latency_s": round(self.latency_s, 3),
            **({"why_not": self.why_not} if self.why_not else {}),
        }


@dataclass
class QualityTable:
    table: dict[str, dict[str, dict[str, float]]]
    cost: dict[str, dict[str, dict[str, float]]]
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.header.get("version", "unversioned"))

    def prior(self) -> dict[str, float]:
        counts = self.header.get("label_counts") or {}
        total = sum(counts.values())
        return {c: counts.get(c, 0) / total for c in CLASSES} if total else dict.fromkeys(CLASSES, 1 / 3)

    def has(self, model: str, policy: str) -> bool:
        return policy in self.table.get(model, {})

    def expected(self, model: str, policy: str, probs: dict[str, float]) -> float:
        by_class = self.table[model][policy]
        return sum(probs.get(c, 0.0) * by_class.get(c, 0.0) for c in CLASSES)

    def latency(self, model: str, policy: str) -> float:
        return float(self.cost[model][policy]["latency_s"])

    def choose(
        self,
        models: list[str],
        policies: list[str],
        probs: dict[str, float],
        margin: float,
        per_second: float | None = None,
    ) -> tuple[Choice, list[Choice]]:
        """With ``per_second``, the (model, policy) with the highest ``expected quality - per_second ×
        latency_s`` (ties to the faster); else the cheapest whose expected quality is at least ``(1 - margin)``
        × the best. Every pair considered comes back, with why each other one lost. Raises ValueError when no
        pair is in the table."""
        pairs = [
            Choice(m, p, self.expected(m, p, probs), self.latency(m, p))
            for m in models
            for p in policies
            if self.has(m, p)
        ]
        if not pairs:
            raise ValueError("the quality table has none of these model × policy pairs")
        if per_second is not None:
            return self._by_gain(pairs, per_second), pairs
        best = max(c.quality for c in pairs)
        floor = best * (1.0 - margin) - 1e-12
        eligible = [c for c in pairs if c.quality >= floor]
        chosen = min(eligible, key=lambda c: (c.latency_s, -c.quality))
        for c in pairs:
            if c is chosen:
                continue
            if c.quality < floor:
                c.why_not = f"expected quality {c.quality:.3f} is below {1 - margin:.0%} of the best ({best:.3f})"
            else:
                c.why_not = (
                    f"slower ({c.latency_s:.2f} s) than {chosen.model}/{chosen.policy} ({chosen.latency_s:.2f} s)"
                )
        return chosen, pairs

    @staticmethod
    def _by_gain(pairs: list[Choice], per_second: float) -> Choice:
        def net(c: Choice) -> float:
            return c.quality - per_second * c.latency_s

        chosen = max(pairs, key=lambda c: (round(net(c), 9), -c.latency_s))
        for c in pairs:
            if c is chosen:
                continue
            extra_s = c.latency_s - chosen.latency_s
            gain = c.quality - chosen.quality
            if extra_s > 0 and gain > 0:
                c.why_not = (
                    f"{extra_s:.2f} s slower than {chosen.model}/{chosen.policy} for {gain:.3f} more expected "
                    f"quality: {gain / extra_s:.4f} a second, below {per_second:g}"
                )
            elif extra_s > 0:
                c.why_not = f"slower ({c.latency_s:.2f} s) and no better than {chosen.model}/{chosen.policy}"
            else:
                c.why_not = (
                    f"expects {chosen.quality - c.quality:.3f} less than {chosen.model}/{chosen.policy}, "
                    f"more than its {-extra_s:.2f} s saved is worth at {per_second:g} a second"
                )
        return chosen

    # -- artifact ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        return write_json(path, {**self.header, "format": FORMAT, "table": self.table, "cost": self.cost})

    @classmethod
    def from_content(cls, content: dict[str, Any]) -> QualityTable:
        header = {k: v for k, v in content.items() if k not in ("table", "cost")}
        return cls(content["table"], content["cost"], header)

    @classmethod
    def load(cls, path: str | Path) -> QualityTable:
        content = read_json(path, "quality table", FORMAT, "ragyard build-quality")
        table, cost = content.get("table"), content.get("cost")
        ok = isinstance(table, dict) and isinstance(cost, dict)
        if isinstance(table, dict) and isinstance(cost, dict):
            for m, policies in table.items():
                for p, by_class in policies.items():
                    ok = ok and (
                        isinstance(by_class, dict)
                        and set(by_class) == set(CLASSES)
                        and all(isinstance(v, int | float) and 0 <= v <= 1 for v in by_class.values())
                        and isinstance(cost.get(m, {}).get(p, {}).get("latency_s"), int | float)
                    )
        if not ok:
            raise RouterArtifactError(
                f"quality table {path} is malformed: it needs table[model][policy][A|B|C] in [0, 1] "
                "and cost[model][policy].latency_s for every cell"
            )
        return cls.from_content(content)
