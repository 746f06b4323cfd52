"""`adaptive`: run the policy the router's complexity class chose (A → none, B → single,
C → multi or dragin), and put the class and its probabilities at the head of the trace."""

from __future__ import annotations

from typing import cast

from retrieval.config import RetrievalConfig
from retrieval.policies.base import PolicyContext, PolicyFacts, Prepared, Question, Step


class AdaptivePolicy(PolicyFacts):
    name = "adaptive"
    rank = 0  # it runs whatever the router chose; the chosen policy's rank is the one that counts
    choosable = False

    def max_llm_calls(self, settings: RetrievalConfig) -> int:
        from retrieval.policies.registry import choosable_policies, get_policy

        return max(get_policy(p).max_llm_calls(settings) for p in choosable_policies())

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        from retrieval.policies.registry import get_policy

        if ctx.complexity is None or "policy" not in ctx.complexity:
            raise RuntimeError("the adaptive policy runs on a plan the router classified")
        chosen = ctx.complexity["policy"]
        if chosen == self.name:
            raise RuntimeError("the router cannot choose 'adaptive' for itself")
        prepared = await get_policy(chosen).prepare(question, ctx)
        prepared.steps.insert(0, cast(Step, {"step": "classify", **ctx.complexity}))
        return prepared
