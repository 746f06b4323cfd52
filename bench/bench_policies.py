"""`ragyard bench policies`: every retrieval policy with one model or each model of the ladder, the router
choosing among them (`adaptive`, and with a ladder `auto/adaptive`), and the oracle a perfect router would
reach, side by side on the held-out halves of the dev files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.harness import read_rows
from services.config import AppConfig

POLICY_ORDER = ("none", "single", "multi", "dragin", "adaptive")
ORACLE = "oracle"


def policy_setups(models: list[str], policies: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(label, model, policy) of every run per question: each model with each policy; with a ladder,
    labels are ``model/policy`` and ``auto/adaptive`` (the router picks the model too) joins them."""
    if len(models) == 1:
        return [(p, models[0], p) for p in policies]
    out = [(f"{m}/{p}", m, p) for m in models for p in policies]
    if "adaptive" in policies:
        out.append(("auto/adaptive", "auto", "adaptive"))
    return out


def bench_policies(
    config: AppConfig,
    data: list[str],
    out: str | Path,
    *,
    seed: int = 0,
    limit: int | None = None,
    max_tokens: int = 32,
    policies: tuple[str, ...] = POLICY_ORDER,
    models: list[str] | None = None,
) -> str:
    """Every policy on the held-out half of each file (the router trained on the other half), with one
    model or each model of the ladder, and with the ladder ``auto/adaptive``: the router choosing the
    model and the policy.

    Runs are interleaved question by question (the order rotating), so a slow spell on this shared
    machine lands on every setup alike and the time ratios stay side by side.
    """
    import asyncio

    from bench.harness import Evaluator, summarise
    from router.labels import split_rows

    models = models or [config.default_model.id]
    evaluator = Evaluator(config, models=models)
    setups = policy_setups(models, policies)
    labels = [label for label, _, _ in setups]
    policy_of = {label: policy for label, _, policy in setups}
    per_file: dict[str, dict[str, Any]] = {}
    all_preds: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for path in data:
        _, test = split_rows(read_rows(path), seed)
        if limit is not None:
            test = test[:limit]
        service = evaluator.service_for(path)
        name = Path(path).name
        preds: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}

        async def run_file(
            rows: list[dict[str, Any]], service: Any = service, preds: Any = preds, name: str = name
        ) -> None:
            for n, row in enumerate(rows, start=1):
                shift = n % len(setups)
                for label, model, policy in setups[shift:] + setups[:shift]:
                    preds[label].append(
                        await evaluator.answer_row(service, row, policy, max_tokens=max_tokens, n=n, model=model)
                    )
                if n % 10 == 0 or n == len(rows):
                    line = " ".join(
                        f"{label}={statistics.fmean(x['f1'] for x in preds[label]):.3f}/"
                        f"{statistics.fmean(x['latency_s'] for x in preds[label]):.1f}s"
                        for label in labels
                    )
                    print(f"  {name} {n}/{len(rows)} f1/mean s: {line}", flush=True)  # noqa: T201

        asyncio.run(run_file(test))
        per_file[name] = {label: summarise(preds[label], policy=label, data=name) for label in labels}
        if (picks := oracle_picks(preds)) is not None:
            per_file[name][ORACLE] = summarise(picks, policy=ORACLE, data=name)
        for label in labels:
            all_preds[label] += preds[label]
    joined = "+".join(Path(d).name for d in data)
    combined = {label: summarise(all_preds[label], policy=label, data=joined) for label in labels}
    for label in labels:
        combined[label]["models_used"] = _count_models(all_preds[label])
    if (picks := oracle_picks(all_preds)) is not None:
        combined[ORACLE] = summarise(picks, policy=ORACLE, data=joined)
        combined[ORACLE]["models_used"] = _count_models(picks)
        combined[ORACLE]["setups_used"] = _count(p["setup"] for p in picks)
    result = {
        "models": models,
        "router": {
            "artifact": config.router.artifact,
            "quality_table": config.router.quality_table,
            "multi_hop_policy": config.router.multi_hop_policy,
        },
        "split": {"seed": seed, "half": "test", "limit": limit},
        "policies": combined,
        "per_file": per_file,
        "targets": _policy_targets(combined, per_file),
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "policies.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for label in labels:
            for pred in all_preds[label]:
                fh.write(json.dumps({"setup": label, "policy": policy_of[label], **pred}) + "\n")
    table = policy_table(combined)
    (out_dir / "policies.md").write_text(table, encoding="utf-8")
    return table


def oracle_picks(preds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """What a perfect router would have run: for each question, the fastest fixed setup among those with
    its best F1 (no extra runs; the fixed setups' own answers). None with fewer than two fixed setups.
    It bounds what `adaptive` can reach with these setups on these questions."""
    fixed = [label for label in preds if not label.endswith("adaptive") and label != ORACLE]
    if len(fixed) < 2:
        return None
    picks = []
    for answers in zip(*(preds[label] for label in fixed), strict=True):
        best = max(a["f1"] for a in answers)
        label, answer = min(
            ((label, a) for label, a in zip(fixed, answers, strict=True) if a["f1"] >= best),
            key=lambda pair: pair[1]["latency_s"],
        )
        picks.append({**answer, "setup": label})
    return picks


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def _count_models(preds: list[dict[str, Any]]) -> dict[str, int]:
    return _count(p["model"] for p in preds)


def policy_table(combined: dict[str, dict[str, Any]]) -> str:
    """Adaptive-RAG's Table 1 shape: EM, F1, retrieval steps, time relative to `single` (with a ladder,
    the first model's `single`)."""
    single = next((k for k in combined if k == "single" or k.endswith("/single")), None)
    base = (combined[single]["mean_latency_s"] if single else 0.0) or 1.0
    lines = [
        "| policy | EM | F1 | retrieval steps | LLM calls | time (vs single) | mean s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in combined.items():
        lines.append(
            f"| {name} | {m['em']:.3f} | {m['f1']:.3f} | {m['retrieval_steps_mean']:.2f} | "
            f"{m['llm_calls_mean']:.2f} | {m['mean_latency_s'] / base:.2f} | {m['mean_latency_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _policy_targets(combined: dict[str, Any], per_file: dict[str, Any]) -> dict[str, Any]:
    """Adaptive (with a ladder: ``auto/adaptive``) against the best fixed (model, policy); DRAGIN against
    `multi` on the multi-hop files, per model."""
    fixed = {p: m for p, m in combined.items() if not p.endswith("adaptive") and p != ORACLE}
    adaptive = "auto/adaptive" if "auto/adaptive" in combined else "adaptive"
    out: dict[str, Any] = {}
    if fixed:
        best = max(fixed, key=lambda p: fixed[p]["f1"])
        for key, label in (("adaptive_vs_best_fixed", adaptive), ("oracle_vs_best_fixed", ORACLE)):
            if label not in combined:
                continue
            run = combined[label]
            f1_ratio = run["f1"] / fixed[best]["f1"] if fixed[best]["f1"] else 0.0
            time_ratio = run["mean_latency_s"] / fixed[best]["mean_latency_s"] if fixed[best]["mean_latency_s"] else 0.0
            out[key] = {
                "run": label,
                "best_fixed": best,
                "f1_ratio": round(f1_ratio, 4),
                "time_ratio": round(time_ratio, 4),
                "met": f1_ratio >= 0.97 and time_ratio <= 0.40,
            }
    multi_hop = [f for f in per_file if "hotpot" in f]
    prefixes = sorted({k[: -len("multi")] for k in combined if k == "multi" or k.endswith("/multi")})
    for f, prefix in ((f, prefix) for f in multi_hop for prefix in prefixes):
        m, d = per_file[f].get(f"{prefix}multi"), per_file[f].get(f"{prefix}dragin")
        if m and d:
            out[f"dragin_vs_multi_{prefix}{f}"] = {
                "retrieval_steps": [d["retrieval_steps_mean"], m["retrieval_steps_mean"]],
                "f1": [d["f1"], m["f1"]],
                "met": d["retrieval_steps_mean"] < m["retrieval_steps_mean"] and d["f1"] >= m["f1"],
            }
    return out
