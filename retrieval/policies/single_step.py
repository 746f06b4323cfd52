"""`single`: retrieve top-k once for the question, then answer (Adaptive-RAG's class B)."""

from __future__ import annotations

from retrieval.policies.base import (
    PolicyContext,
    PolicyFacts,
    Prepared,
    Question,
    Step,
    final_prompt,
    retrieve_step,
)


class SingleStepPolicy(PolicyFacts):
    name = "single"
    label_class = "B"

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        steps: list[Step] = []
        passages, spent = await retrieve_step(question.search_text, ctx, steps)
        prompt = final_prompt(question, passages, ctx, steps)
        return Prepared(
            prompt.messages, prompt.cited, steps, retrieval_steps=1, retrieve_s=spent, excerpts=prompt.excerpts
        )
