"""`none`: the model answers from what it knows (Adaptive-RAG's class A)."""

from __future__ import annotations

from retrieval.policies.base import PolicyContext, PolicyFacts, Prepared, Question, final_messages


class NoRetrievalPolicy(PolicyFacts):
    name = "none"
    rank = 0
    label_class = "A"

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        return Prepared(final_messages(question, None, ctx), [], [], retrieval_steps=0, retrieve_s=0.0)
