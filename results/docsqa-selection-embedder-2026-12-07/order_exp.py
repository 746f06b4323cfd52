"""The sentence selection's units shown best first (passages by their best kept unit, units within a passage by
score) instead of in relevance order of passages and document order within each; optionally ranked by words and
the embedder. Run from the repository root:
`.venv/bin/python results/docsqa-selection-embedder-2026-12-07/order_exp.py VARIANT OUT` with VARIANT `order`
(words, best first), `embed:W` (words and embedder at weight W, document order) or `order+embed:W`."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import retrieval.policies.base as base  # noqa: E402
import retrieval.selection as sel  # noqa: E402
from bench.bench_docsqa import bench_docsqa  # noqa: E402
from retrieval.prompts import CHARS_PER_TOKEN  # noqa: E402
from services.config import load_config  # noqa: E402

_embedder: Any = None


def ranked_units(question: str, passages: Any, context: str | None, weight: float) -> list[sel.Unit]:
    global _embedder
    units = sel.line_units(passages)
    if not units:
        return []
    sel._score(units, question, context)
    best = max(u.score for u in units)
    if best <= 0:
        return []
    if weight > 0:
        if _embedder is None:
            from retrieval.embedder import Embedder

            _embedder = Embedder()
        vec = _embedder.encode([question] + [sel.unit_text(u) for u in units])
        cos = (vec[1:] @ vec[0]).tolist()
        for u, c in zip(units, cos, strict=True):
            u.score = (1 - weight) * u.score / best + weight * max(0.0, c)
    return units


def select(
    question: str,
    passages: Any,
    max_tokens: int,
    *,
    context: str | None = None,
    weight: float = 0.0,
    best_first: bool = False,
) -> list[Any]:
    units = ranked_units(question, passages, context, weight)
    if not units:
        return []
    ranked = sorted(units, key=lambda u: (-u.score, u.passage, u.order))
    budget = max_tokens * CHARS_PER_TOKEN
    used = 0.0
    kept: dict[tuple[int, int], float] = {}
    by_key = {(u.passage, u.order): u for u in units}
    seen: list[str] = []
    for u in ranked:
        if u.score <= 0:
            break
        if any(u.text in t for t in seen):
            continue
        picks = [u]
        after = by_key.get((u.passage, u.order + 1))
        if len(u.text) < 60 and u.header is None and after is not None and after.header is None:
            picks.append(after)
        cost = sum(len(p.text) + len(p.header or "") for p in picks if (p.passage, p.order) not in kept)
        if kept and used + cost > budget:
            continue
        used += cost
        for p in picks:
            kept.setdefault((p.passage, p.order), u.score)
        seen.extend(p.text for p in picks)
    order = list(range(len(passages)))
    if best_first:
        top = {n: max((s for (pn, _), s in kept.items() if pn == n), default=-1.0) for n in order}
        order.sort(key=lambda n: -top[n])
    out = []
    for n in order:
        mine = [u for u in units if u.passage == n and (u.passage, u.order) in kept]
        if not mine:
            continue
        if best_first:
            mine.sort(key=lambda u: (-kept[(u.passage, u.order)], u.order))
        lines: list[str] = []
        heading = None
        header = None
        for u in mine:
            if u.heading and u.heading != heading:
                lines.append(f"## {u.heading}")
                heading = u.heading
            if u.header and u.header != header:
                lines.append(u.header)
            header = u.header
            lines.append(u.text)
        p = passages[n]
        out.append(replace(p, chunk=replace(p.chunk, text="\n".join(lines))))
    return out


def main(variant: str, out: str, config: str = "results/docsqa-tuning/context/qwen-sentences-350.yaml") -> None:
    best_first = variant.startswith("order")
    weight = float(variant.split(":")[1]) if ":" in variant else 0.0

    def patched(question: str, passages: Any, max_tokens: int, *, context: str | None = None) -> list[Any]:
        return select(question, passages, max_tokens, context=context, weight=weight, best_first=best_first)

    base.select_sentences = patched
    print(bench_docsqa(load_config(config), out))  # noqa: T201


if __name__ == "__main__":
    main(*sys.argv[1:])
