"""A retrieval policy that lives outside the package, registered by "module:Class" in the config
(`retrieval.plugins`): `single`, but it retrieves twice the passages and keeps the top_k sharing the
most words with the question. The tests show it is requested, planned, budgeted and served without a
line of router, controller or service code naming it."""

from __future__ import annotations

import dataclasses
from typing import Any

from retrieval.policies.base import PolicyContext, PolicyFacts, Prepared, Question, final_messages, retrieve_step


class SingleRerankPolicy(PolicyFacts):
    """One pass, choosable, one model call: PolicyFacts' defaults."""

    name = "single_rerank"

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        steps: list[dict[str, Any]] = []
        wide = dataclasses.replace(ctx, top_k=ctx.top_k * 2)
        passages, spent = await retrieve_step(question.text, wide, steps)
        words = set(question.text.lower().split())
        kept = sorted(passages, key=lambda p: -len(words & set(p.chunk.text.lower().split())))[: ctx.top_k]
        steps.append({"step": "rerank", "kept": [p.chunk.chunk_id for p in kept]})
        return Prepared(final_messages(question, kept, ctx), kept, steps, retrieval_steps=1, retrieve_s=spent)


class Misnamed(SingleRerankPolicy):
    name = "something_else"


class Incomplete:
    name = "incomplete"

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        raise NotImplementedError
