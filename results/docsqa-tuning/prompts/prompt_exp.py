"""The prompt variants of the README's docs-QA prompt experiments (2026-12-06), run from the repository root:
`.venv/bin/python results/docsqa-tuning/prompts/prompt_exp.py A|B|C|D|E OUT [CONFIG]`. A is the shipped prompt;
B asks for the fact named as the passages write it; C also puts the question before the passages; D adds a
one-line example to B; E puts the most relevant passage last, nearest the question."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import retrieval.policies.base as base  # noqa: E402
import retrieval.prompts as prompts  # noqa: E402
from bench.bench_docsqa import bench_docsqa  # noqa: E402
from services.config import load_config  # noqa: E402

B_SYSTEM = (
    "You are Ragyard's assistant. Answer with the fact the question asks for, taken from the passages and named "
    "exactly as they write it (a command, a route, a setting, a number), in one or two sentences. Do not repeat the "
    "question. If the passages do not hold the answer, say that you do not know."
)
D_EXAMPLE = "\n\nExample. Question: Which route lists the models? Answer: `GET /v1/models` lists them."


def main(variant: str, out: str, config: str = "results/docsqa-tuning/llamacpp-full-prefill.yaml") -> None:
    if variant in ("B", "C", "D"):
        prompts.SYSTEM_RAG = B_SYSTEM + (D_EXAMPLE if variant == "D" else "")
    if variant == "C":
        shipped = prompts.build_messages

        def question_first(question: str, passages: Any, **kw: Any) -> Any:
            msgs = shipped(question, passages, **kw)
            if passages and kw.get("style", "chat") == "chat":
                ask = "\nAnswer it, naming the exact command, route, setting or value:"
                body = msgs[-1].content.replace("\nAnswer in one or two sentences:", ask)
                msgs[-1] = prompts.ChatMessage(role="user", content=f"Question: {question}\n\n{body}")
            return msgs

        base.build_messages = question_first
    if variant == "E":
        fit = base.fit_passages
        base.fit_passages = lambda passages, budget: list(reversed(fit(passages, budget)))
    print(bench_docsqa(load_config(config), out))  # noqa: T201


if __name__ == "__main__":
    main(*sys.argv[1:])
