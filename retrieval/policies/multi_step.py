"""`multi`: IRCoT-style multi-step retrieval (Adaptive-RAG's class C).

Retrieve for the question; then alternate one reasoning sentence (written from the passages so far)
and one retrieval with that sentence as the query, until a sentence states the answer or the step
cap is reached. The final answer is generated from all passages gathered, taken round-robin across
the steps so each hop keeps its best passages inside the context budget.
"""

from __future__ import annotations

import re

from retrieval.config import RetrievalConfig
from retrieval.documents import Passage
from retrieval.generation import ChatMessage, SamplingParams
from retrieval.policies.base import (
    PolicyContext,
    PolicyFacts,
    Prepared,
    Question,
    Step,
    final_prompt,
    retrieve_step,
)
from retrieval.prompts import FENCE_RULE, format_passages

REASON_SYSTEM = (
    "Answer the question by reasoning step by step from the passages, one short sentence at a time. "
    "When you know the answer, write: So the answer is: <answer>."
)
_ANSWER_MARK = re.compile(r"answer is", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def first_sentence(text: str) -> str:
    text = text.strip()
    parts = _SENTENCE_END.split(text, maxsplit=1)
    return parts[0].strip() if parts else ""


def round_robin(per_step: list[list[Passage]]) -> list[Passage]:
    out: list[Passage] = []
    seen: set[int] = set()
    for rank in range(max((len(s) for s in per_step), default=0)):
        for step in per_step:
            if rank < len(step) and step[rank].chunk.chunk_id not in seen:
                seen.add(step[rank].chunk.chunk_id)
                out.append(step[rank])
    return out


class MultiStepPolicy(PolicyFacts):
    name = "multi"
    rank = 2
    label_class = "C"

    def max_llm_calls(self, settings: RetrievalConfig) -> int:
        return settings.multi_max_steps + 1  # a reasoning sentence per step, then the answer

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        settings = ctx.settings or RetrievalConfig()
        steps: list[Step] = []
        first, spent = await retrieve_step(question.search_text, ctx, steps)
        per_step = [first]
        retrieve_s = spent
        reasoning: list[str] = []
        fenced = settings.injection != "off"
        calls = prompt_tokens = completion_tokens = 0
        reason_params = SamplingParams(
            max_tokens=settings.multi_step_tokens, stop=("\n",), priority=ctx.params.priority if ctx.params else 0
        )
        while len(per_step) < settings.multi_max_steps:
            passages = round_robin(per_step)
            messages = [
                ChatMessage(role="system", content=f"{REASON_SYSTEM} {FENCE_RULE}" if fenced else REASON_SYSTEM),
                ChatMessage(
                    role="user",
                    content=f"Passages:\n{format_passages(passages[:8], fence=fenced)}\n\nQuestion: {question.text}",
                ),
            ]
            prefix = " ".join(reasoning) + (" " if reasoning else "")
            result = await ctx.generate(messages, reason_params, prefix)
            calls += 1
            prompt_tokens += result.stats.prompt_tokens
            completion_tokens += result.stats.completion_tokens
            sentence = first_sentence(result.text)
            steps.append({"step": "reason", "sentence": sentence, "completion_tokens": result.stats.completion_tokens})
            if not sentence or sentence in reasoning:
                break
            reasoning.append(sentence)
            if _ANSWER_MARK.search(sentence):
                break
            found, spent = await retrieve_step(sentence, ctx, steps)
            retrieve_s += spent
            per_step.append(found)
        prompt = final_prompt(question, round_robin(per_step), ctx, steps)
        return Prepared(
            prompt.messages,
            prompt.cited,
            steps,
            retrieval_steps=len(per_step),
            retrieve_s=retrieve_s,
            llm_calls_before=calls,
            prompt_tokens_before=prompt_tokens,
            completion_tokens_before=completion_tokens,
            excerpts=prompt.excerpts,
        )
