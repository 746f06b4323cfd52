"""`adaptive`: run the policy the router's complexity class chose (A → none, B → single,
C → multi or dragin), and put the class and its probabilities at the head of the trace."""

from __future__ import annotations

from retrieval.policies.base import PolicyContext, Prepared, Question


class AdaptivePolicy:
    name = "adaptive"

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        from retrieval.policies.registry import get_policy

        if ctx.complexity is None or "policy" not in ctx.complexity:
            raise RuntimeError("the adaptive policy runs on a plan the router classified")
        chosen = ctx.complexity["policy"]
        if chosen == self.name:
            raise RuntimeError("the router cannot choose 'adaptive' for itself")
        prepared = await get_policy(chosen).prepare(question, ctx)
        prepared.steps.insert(0, {"step": "classify", **ctx.complexity})
        return prepared
