"""Context experiments of the README's "Context a small model can use" (2026-12-07), run from the repository
root: `.venv/bin/python results/docsqa-tuning/context/context_exp.py VARIANT OUT [CONFIG]`. VARIANT is
`passages` (whole passages, as `retrieval.context: passages`), `sentences:N` (retrieval/selection.py with a budget
of N tokens, patched in so that every prompt is prefilled in full) or `coverage` (no model: for how many questions
every key fact is in the top 4 passages, and in the sentences selected from the top 4 and 8 at several budgets)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import retrieval.policies.base as base  # noqa: E402
from bench.bench_docsqa import bench_docsqa  # noqa: E402
from retrieval.selection import select_sentences  # noqa: E402
from services.config import load_config  # noqa: E402


def coverage(config: str) -> None:
    from bench.bench_docsqa import docs_retriever, read_docs_qa
    from retrieval.embedder import Embedder

    cfg = load_config(config)
    retriever = docs_retriever(cfg, Embedder())
    rows = [(r, retriever.search(r["question"], 8, mode="hybrid")) for r in read_docs_qa()]

    def holds(passages: Any, groups: list[list[str]]) -> bool:
        text = "\n".join(p.chunk.text for p in passages).lower()
        return all(any(a.lower() in text for a in g) for g in groups)

    print("whole passages, top 4:", sum(holds(ps[:4], r["must_include"]) for r, ps in rows))  # noqa: T201
    for k in (4, 8):
        for budget in (250, 350, 500):
            kept = [(r, select_sentences(r["question"], ps[:k], budget) or ps[:4]) for r, ps in rows]
            n = sum(holds(sel, r["must_include"]) for r, sel in kept)
            chars = sum(len(p.chunk.text) for _, sel in kept for p in sel) / len(kept)
            print(f"sentences {budget} from top {k}: {n} (mean {chars:.0f} characters)")  # noqa: T201


def main(variant: str, out: str = "", config: str = "results/docsqa-tuning/llamacpp-full-prefill.yaml") -> None:
    if variant == "coverage":
        coverage(config)
        return
    if variant.startswith("sentences:"):
        budget = int(variant.split(":")[1])
        shipped = base.build_messages

        def selected(question: str, passages: Any, **kw: Any) -> Any:
            if passages:
                passages = select_sentences(question, passages, budget)
            return shipped(question, passages, **kw)

        base.build_messages = selected
    print(bench_docsqa(load_config(config), out))  # noqa: T201


if __name__ == "__main__":
    main(*sys.argv[1:])
