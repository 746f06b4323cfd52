"""`dragin`: DRAGIN (arXiv 2403.10081), dynamic retrieval driven by the model's own signals.

Generate without retrieval, watching each token (RIND: entropy x attention the token receives from
later tokens, stopwords excluded). At the first token over the threshold, form a query from the
context tokens that token attends to most (QFS), retrieve, keep the answer written before the
sentence holding the trigger, and regenerate from there with the passages. Repeat up to the cap.
On an engine without attentions the policy runs on entropy alone and says so in its trace.
"""

from __future__ import annotations

import re

from retrieval.config import RetrievalConfig
from retrieval.documents import Passage
from retrieval.generation import GenerationResult, SamplingParams
from retrieval.policies.base import (
    PolicyContext,
    PolicyFacts,
    Prepared,
    Question,
    Step,
    final_messages,
    retrieve_step,
)
from retrieval.policies.dragin_signals import first_trigger, locate, qfs_query, rind_scores

_SENTENCE_BREAK = re.compile(r"[.!?\n]\s*")


def keep_before_sentence(tokens: list[str], index: int) -> tuple[str, int]:
    """The completion text before the sentence that holds token ``index``, and its token count."""
    text = ""
    kept_text, kept_tokens = "", 0
    for n, tok in enumerate(tokens[:index]):
        text += tok
        if _SENTENCE_BREAK.search(tok):
            kept_text, kept_tokens = text, n + 1
    return kept_text, kept_tokens


def merge(passages: list[Passage], new: list[Passage]) -> list[Passage]:
    # Newest first: the latest retrieval answers the part of the answer the model is unsure of.
    seen = {p.chunk.chunk_id for p in new}
    return new + [p for p in passages if p.chunk.chunk_id not in seen]


class DraginPolicy(PolicyFacts):
    name = "dragin"  # rank 1: it retrieves when the model is unsure, so a floor of `single` admits it

    def max_llm_calls(self, settings: RetrievalConfig) -> int:
        return settings.dragin_max_retrievals + 2  # a generation before each retrieval, one after the last

    async def prepare(self, question: Question, ctx: PolicyContext) -> Prepared:
        if ctx.generate_with_signals is None:
            raise RuntimeError("the dragin policy needs a worker that can generate with signals")
        settings = ctx.settings or RetrievalConfig()
        asked = ctx.params or SamplingParams()
        # The passes that decide when to retrieve run unconstrained and without logprobs (they are drafts).
        params = asked.plain()
        steps: list[Step] = []
        passages: list[Passage] = []
        prefix, prefix_tokens = "", 0
        retrievals = calls = prompt_tokens = completion_tokens = 0
        retrieve_s = 0.0
        messages = final_messages(question, None, ctx)
        while True:
            remaining = max(1, params.max_tokens - prefix_tokens)
            result = await ctx.generate_with_signals(
                messages, params.model_copy(update={"max_tokens": remaining}), prefix
            )
            calls += 1
            prompt_tokens += result.stats.prompt_tokens
            completion_tokens += result.stats.completion_tokens
            completion = result.tokens[result.prompt_len :]
            scores = rind_scores(result.entropies, result.attention, completion, result.prompt_len)
            trigger = first_trigger(scores, completion, settings.dragin_threshold)
            step: Step = {
                "step": "generate",
                "completion_tokens": result.stats.completion_tokens,
                "max_rind": round(max(scores, default=0.0), 4),
                "signals": "entropy x attention" if result.attention is not None else "entropy only (no attention)",
            }
            steps.append(step)
            if trigger is None or retrievals >= settings.dragin_max_retrievals:
                step["trigger"] = None
                # A constrained answer (response_format) or one whose logprobs were asked for comes from a
                # call under the request's own params: the final generation, over what was retrieved.
                shaped = asked.shapes_output
                return Prepared(
                    final_messages(question, passages or None, ctx) if shaped else messages,
                    passages,
                    steps,
                    retrieval_steps=retrievals,
                    retrieve_s=retrieve_s,
                    llm_calls_before=calls,
                    prompt_tokens_before=prompt_tokens,
                    completion_tokens_before=completion_tokens,
                    answer=None
                    if shaped
                    else GenerationResult(prefix + result.text, result.finish_reason, result.stats),
                )
            step["trigger"] = {"token": trigger.token, "index": trigger.index, "score": round(trigger.score, 4)}
            upto = result.prompt_len + trigger.index
            if result.attention is not None:
                # The query draws on the question and the answer so far, not on instructions or passages.
                start = locate(result.tokens[: result.prompt_len], question.text)
                query = qfs_query(
                    result.attention[trigger.index], result.tokens, upto, settings.dragin_query_tokens, start
                )
            else:
                query = ""
            if not query.strip():
                query = f"{question.search_text} {prefix}{''.join(completion[: trigger.index])}".strip()
            found, spent = await retrieve_step(query, ctx, steps)
            retrieve_s += spent
            retrievals += 1
            passages = merge(passages, found)
            kept, kept_tokens = keep_before_sentence(completion, trigger.index)
            prefix, prefix_tokens = prefix + kept, prefix_tokens + kept_tokens
            messages = final_messages(question, passages, ctx)
