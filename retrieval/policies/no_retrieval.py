"""`none`: the model answers from what it knows (Adaptive-RAG's class A)."""

from __future__ import annotations

from retrieval.config import RetrievalConfig
from retrieval.policies.base import PolicyContext, Prepared, Question, final_messages


class NoRetrievalPolicy:
    name = "none"
    rank = 0
    choosable = True
    label_class = "A"

    def max_llm_calls(self, settings: RetrievalConfig) -> int:
        return 1

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        return Prepared(final_messages(question, None, ctx), [], [], retrieval_steps=0, retrieve_s=0.0)
