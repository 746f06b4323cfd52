"""The prompt experiment of the README's "Context a small model can use" (2026-12-07, not kept): the question
before the passages as well as after them. Run from the repository root:
`.venv/bin/python results/docsqa-context/rejected/question_first.py OUT CONFIG`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import retrieval.policies.base as base  # noqa: E402
import retrieval.prompts as prompts  # noqa: E402
from bench.bench_docsqa import bench_docsqa  # noqa: E402
from retrieval.generation import ChatMessage  # noqa: E402
from services.config import load_config  # noqa: E402

shipped = prompts.build_messages


def question_first(question: str, passages: Any, **kw: Any) -> list[ChatMessage]:
    out = shipped(question, passages, **kw)
    if passages and kw.get("style", "chat") == "chat":
        out[-1] = ChatMessage(role=out[-1].role, content=f"Question: {question}\n\n{out[-1].content}")
    return out


if __name__ == "__main__":
    base.build_messages = question_first
    print(bench_docsqa(load_config(sys.argv[2]), sys.argv[1]))  # noqa: T201
