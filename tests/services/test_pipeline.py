"""The one answer pipeline (`RagService._events` over `answer_events`) with a scripted engine: `answer`
and `stream` give the same record, the stream's deltas join to the answer, a failing engine caches
nothing and leaves the next request whole. FAISS, the router and the response cache are real; the embedder is
the hashing one."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retrieval.answering import Ran
from retrieval.documents import Document
from retrieval.generation import ChatMessage
from retrieval.policies.base import Question
from retrieval.retriever import Retriever
from services.config import load_config
from services.deployments.retriever import RetrieverService
from services.deployments.worker import Worker
from services.pipeline import Answer, AnswerRequest, RagService, StreamEvent, build_cache
from services.pipeline.clients import RetrieverClient, local_retriever, local_worker
from tests.fakes import EngineFailure, ScriptedEngine

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def retriever(hashing_embedder: Any, session_tmp: Path) -> RetrieverClient:
    config = load_config({"index": {"dir": str(session_tmp / "pipeline-index")}, "corpus": {"ingest_on_start": False}})
    svc = RetrieverService(config, retriever=Retriever.create(index_dir=config.index.dir, embedder=hashing_embedder))
    svc.retriever.ingest(
        [
            Document(id="bridge", title="Lim bridge", text="The Lim bridge is maintained by the Quux company."),
            Document(id="port", title="Ports", text="Ragyard serves on port 8000 by default."),
        ]
    )
    return local_retriever(svc)


@pytest.fixture
def service(retriever: RetrieverClient) -> Callable[[ScriptedEngine], RagService]:
    def build(engine: ScriptedEngine, **retrieval: Any) -> RagService:
        # Quotes only under an answer that fails a check, so these tests see the model's words as they were; the
        # default (every answer quoted) has its own test below.
        config = load_config(
            {
                "models": [{"id": MODEL}],
                "cache": {"response_cache_url": "memory://"},
                "retrieval": {"evidence_when": "failed", **retrieval},
            }
        )
        worker = local_worker(Worker(config, MODEL, engine=engine))
        return RagService(config, retriever, {MODEL: worker}, cache=build_cache(config))

    return build


def _stream(svc: RagService, req: AnswerRequest) -> list[StreamEvent[Answer]]:
    async def run() -> list[StreamEvent[Answer]]:
        return [ev async for ev in svc.stream(req)]

    return asyncio.run(run())


def _same_but_ids_and_times(a: Answer, b: Answer | None) -> None:
    assert b is not None
    skip: Any = {"id": True, "timings": True, "trace": True, "support": {"seconds"}}
    assert a.model_dump(exclude=skip) == b.model_dump(exclude=skip)
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in a.trace]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in b.trace]


@pytest.mark.parametrize("policy", ["none", "single", "multi", "dragin"])
def test_answer_and_stream_give_the_same_record(service: Any, policy: str) -> None:
    engine = ScriptedEngine("  The Quux company maintains it.  ")
    req = AnswerRequest(question=Question(text="Who maintains the Lim bridge?"), policy=policy, max_tokens=32)
    answered = service(engine).answer(req)
    record = asyncio.run(answered)
    events = _stream(service(engine), req)
    assert [ev.record is not None for ev in events] == [False] * (len(events) - 1) + [True]
    streamed = events[-1].record
    assert streamed is not None
    # Leading and trailing whitespace go on both paths; the deltas join to the answer.
    assert record.answer == "The Quux company maintains it." == "".join(ev.text for ev in events[:-1])
    assert record.cache.model_dump() == streamed.cache.model_dump() == {"response": "miss"}
    _same_but_ids_and_times(record, streamed)
    assert record.trace[-1]["step"] == "generate" and record.llm_calls >= 1
    # Usage is the engine's own count of what it was given and gave.
    if policy in ("none", "single"):
        assert record.usage.prompt_tokens == engine.count_tokens(engine.prompts[-1])
        assert record.usage.completion_tokens == 5
    if policy == "single":
        assert "Quux" in engine.prompts[-1] and record.citations


def test_a_cut_answer_says_length_on_both_paths(service: Any) -> None:
    engine = ScriptedEngine("one two three four five six")
    req = AnswerRequest(question=Question(text="Count."), policy="none", max_tokens=3)
    record = asyncio.run(service(engine).answer(req))
    streamed = _stream(service(engine), req)[-1].record
    assert streamed is not None
    assert record.answer == streamed.answer == "one two three"
    assert record.finish_reason == streamed.finish_reason == "length"
    assert record.usage.completion_tokens == 3


def test_a_failing_engine_caches_nothing_and_the_next_request_is_whole(service: Any) -> None:
    engine = ScriptedEngine("partial words then a crash", fail_after=2)
    svc = service(engine)
    req = AnswerRequest(question=Question(text="Which port does Ragyard use?"), policy="single", max_tokens=16)
    seen: list[str] = []

    async def consume() -> None:
        async for ev in svc.stream(req):
            seen.append(ev.text)

    with pytest.raises(EngineFailure):
        asyncio.run(consume())
    assert seen == ["partial", " words"]  # what was sent before the failure
    with pytest.raises(EngineFailure):
        asyncio.run(svc.answer(req))
    engine.fail_after = None
    first = asyncio.run(svc.answer(req))
    second = asyncio.run(svc.answer(req))
    assert first.cache.response == "miss" and second.cache.response == "hit"
    # (The passages' closest line follows: no passage supports the scripted words.)
    assert first.answer == second.answer and first.answer.startswith("partial words then a crash\n\n")


def test_a_cached_answer_streams_as_one_delta(service: Any) -> None:
    engine = ScriptedEngine("Port 8000.")
    svc = service(engine)
    req = AnswerRequest(question=Question(text="Which port?"), policy="none", max_tokens=8)
    asyncio.run(svc.answer(req))
    calls = len(engine.prompts)
    events = _stream(svc, req)
    last = events[-1].record
    assert [ev.text for ev in events[:-1]] == ["Port 8000."] and last is not None and last.cache.response == "hit"
    assert len(engine.prompts) == calls  # the engine was not asked again


def _followup_service(service: Any, engine: ScriptedEngine, mode: str) -> RagService:
    svc = service(engine)
    svc.config = svc.config.model_copy(update={"retrieval": svc.config.retrieval.model_copy(update={"followup": mode})})
    return svc


FOLLOWUP = AnswerRequest(
    question=Question(
        text="And who maintains it?",
        history=[
            ChatMessage(role="user", content="Which bridge crosses the Lim?"),
            ChatMessage(role="assistant", content="The Lim bridge."),
        ],
    ),
    policy="single",
    max_tokens=16,
)


@pytest.mark.parametrize("mode", ["off", "history", "model"])
def test_a_followup_is_searched_as_the_mode_says(service: Any, mode: str) -> None:
    def reply(prompt: str) -> str:
        if "Standalone question:" in prompt:
            return "Who maintains the Lim bridge?"
        return "The Quux company maintains it."

    engine = ScriptedEngine(reply)
    record = asyncio.run(_followup_service(service, engine, mode).answer(FOLLOWUP))
    searched = [s["query"] for s in record.trace if s["step"] == "retrieve"]
    steps = [s["step"] for s in record.trace]
    if mode == "off":
        assert searched == ["And who maintains it?"] and "followup" not in steps
        assert record.llm_calls == 1
        return
    expected = {
        "history": "Which bridge crosses the Lim? The Lim bridge. And who maintains it?",
        "model": "Who maintains the Lim bridge?",
    }[mode]
    assert searched == [expected]
    first = record.trace[0]
    assert first["step"] == "followup" and first["method"] == mode and first["query"] == expected
    # The answer's prompt keeps the conversation and the question as they were asked.
    assert "Question: And who maintains it?" in engine.prompts[-1] and "Which bridge crosses" in engine.prompts[-1]
    # The rewrite is a model call of its own, counted and charged.
    assert record.llm_calls == (2 if mode == "model" else 1)
    if mode == "model":
        rewrite = engine.count_tokens(engine.prompts[0])
        assert record.usage.prompt_tokens == rewrite + engine.count_tokens(engine.prompts[-1])


def test_a_question_without_history_is_searched_as_it_is(service: Any) -> None:
    engine = ScriptedEngine("Port 8000.")
    req = AnswerRequest(question=Question(text="Which port?"), policy="single", max_tokens=8)
    record = asyncio.run(_followup_service(service, engine, "model").answer(req))
    assert [s["query"] for s in record.trace if s["step"] == "retrieve"] == ["Which port?"]
    assert len(engine.prompts) == 1  # no rewrite call


WEAK, STRONG = MODEL, "qwen2.5-coder-0.5b-instruct"


def _cascade(retriever: RetrieverClient, weak: ScriptedEngine, strong: ScriptedEngine, **cascade: Any) -> RagService:
    config = load_config(
        {
            "models": [{"id": WEAK}, {"id": STRONG}],
            "router": {"quality_table": None, "cascade": {"enabled": True, **cascade}},
            "retrieval": {"evidence_when": "failed"},
        }
    )
    workers = {
        WEAK: local_worker(Worker(config, WEAK, engine=weak)),
        STRONG: local_worker(Worker(config, STRONG, engine=strong)),
    }
    return RagService(config, retriever, workers)


ASK = AnswerRequest(question=Question(text="Who maintains the Lim bridge?"), policy="single", max_tokens=16)


@pytest.mark.parametrize("stream", [False, True])
def test_an_unsure_first_answer_is_answered_again_by_the_next_model(retriever: RetrieverClient, stream: bool) -> None:
    weak = ScriptedEngine("The Lim bridge is maintained.")  # restates the question
    strong = ScriptedEngine("The Quux company maintains it.")
    svc = _cascade(retriever, weak, strong)
    ask = dataclasses.replace(ASK, ran=Ran())
    if stream:
        events = _stream(svc, ask)
        record = events[-1].record
        assert record is not None and "".join(e.text for e in events[:-1]) == "The Quux company maintains it."
    else:
        record = asyncio.run(svc.answer(ask))
    # What the SLA controller is told: the next model's own tokens, billed at its price.
    assert ask.ran.escalated_to == STRONG and ask.ran.escalation_completion_tokens == 5
    assert ask.ran.escalation_prompt_tokens == strong.count_tokens(strong.prompts[0])
    assert record.answer == "The Quux company maintains it." and record.model == STRONG
    assert record.plan.model == WEAK and record.plan.escalate_to == STRONG
    cascade = next(s for s in record.trace if s["step"] == "cascade")
    assert cascade["escalated"] and cascade["escalated_to"] == STRONG and cascade["confidence"] == 0.0
    # The record (and a chat completion's `ragyard` extension) carries the first answer for the web page.
    assert record.cascade == {k: v for k, v in cascade.items() if k != "step"}
    assert record.extension()["cascade"]["answer"] == "The Lim bridge is maintained."
    # The prompt held lines selected from the passages (the default context); the trace says which.
    select = next(s for s in record.trace if s["step"] == "select")
    assert select["excerpts"] and all(k["lines"] for k in select["excerpts"])
    assert {k["document_id"] for k in select["excerpts"]} <= {c.document_id for c in record.citations}
    assert cascade["answer"] == "The Lim bridge is maintained." and cascade["reasons"] == ["restates the question"]
    # Both calls ran over the same prompt (the passages are reused) and both are charged.
    assert len(weak.prompts) == len(strong.prompts) == 1 and weak.prompts[0] == strong.prompts[0]
    assert record.llm_calls == 2
    assert record.usage.completion_tokens == 5 + 5
    assert record.usage.prompt_tokens == 2 * weak.count_tokens(weak.prompts[0])


def test_a_sure_first_answer_stands_and_the_next_model_is_not_asked(retriever: RetrieverClient) -> None:
    weak = ScriptedEngine("The Quux company maintains it.", logprob=-0.05)
    strong = ScriptedEngine("never asked")
    record = asyncio.run(_cascade(retriever, weak, strong, min_confidence=0.5).answer(ASK))
    assert record.answer == "The Quux company maintains it." and record.model == WEAK
    cascade = next(s for s in record.trace if s["step"] == "cascade")
    assert not cascade["escalated"] and cascade["confidence"] == pytest.approx(0.9512, abs=1e-4)
    assert strong.prompts == [] and record.llm_calls == 1 and record.logprobs is None
    assert record.cascade is not None and not record.cascade["escalated"]
    assert record.usage.completion_tokens == 5


def test_low_token_probability_escalates_and_a_pinned_model_never_does(retriever: RetrieverClient) -> None:
    weak = ScriptedEngine("The Quux company maintains it.", logprob=-2.0)  # p = 0.135 per word
    strong = ScriptedEngine("The Quux company.")
    svc = _cascade(retriever, weak, strong, min_confidence=0.3)
    assert asyncio.run(svc.answer(ASK)).model == STRONG
    pinned = AnswerRequest(question=ASK.question, model=WEAK, policy="single", max_tokens=16)
    record = asyncio.run(svc.answer(pinned))
    assert record.model == WEAK and record.plan.escalate_to is None
    assert not any(s["step"] == "cascade" for s in record.trace)


@pytest.mark.parametrize("stream", [False, True])
def test_a_restated_answer_gets_the_passages_closest_sentence_on_both_paths(service: Any, stream: bool) -> None:
    """The model restates the question: the sentence that bears most on it is added under the answer, quoted with
    its passage's number, streamed as one more delta after the answer's, and the trace says why."""
    engine = ScriptedEngine("The Lim bridge is maintained.")
    req = AnswerRequest(question=Question(text="Who maintains the Lim bridge?"), policy="single", max_tokens=16)
    if stream:
        events = _stream(service(engine), req)
        record = events[-1].record
        assert record is not None
        texts = [ev.text for ev in events[:-1]]
        assert texts[-1].startswith("\n\nFrom the passages:\n[")
        assert "".join(texts) == record.answer
    else:
        record = asyncio.run(service(engine).answer(req))
    answer, note = record.answer.split("\n\n")
    assert answer == "The Lim bridge is maintained."
    step = record.trace[-1]
    assert step["step"] == "evidence" and step["reasons"] == ["restates the question"]
    assert step["method"] == "words+embedder"  # ranked by the retriever's embedder as well as the words
    sentence = "The Lim bridge is maintained by the Quux company."
    first = step["quotes"][0]
    assert first["text"] == sentence and note.startswith(f"From the passages:\n[{first['passage']}] {sentence}")
    assert len(step["quotes"]) <= 2  # retrieval.evidence_sentences
    assert record.citations[first["passage"] - 1].document_id == "bridge"


def test_an_answer_that_passes_every_check_gets_no_line(service: Any) -> None:
    for reply in ("The Quux company maintains it.", "Yes."):
        req = AnswerRequest(question=Question(text="Who maintains the Lim bridge?"), policy="single", max_tokens=16)
        record = asyncio.run(service(ScriptedEngine(reply)).answer(req))
        assert record.answer == reply and all(s["step"] != "evidence" for s in record.trace)
    # Asked for logprobs, the answer stays the model's own tokens, restated or not.
    req = AnswerRequest(
        question=Question(text="Who maintains the Lim bridge?"), policy="single", max_tokens=16, logprobs=0
    )
    record = asyncio.run(service(ScriptedEngine("The Lim bridge is maintained.")).answer(req))
    assert record.answer == "The Lim bridge is maintained."


@pytest.mark.parametrize("stream", [False, True])
def test_by_default_every_answer_is_quoted_on_both_paths(retriever: RetrieverClient, stream: bool) -> None:
    """`retrieval.evidence_when: always` (the default): an answer that passes every check gets the passages' closest
    sentences too (at most `evidence_sentences`), as one more delta, the trace's step with no reasons."""
    config = load_config({"models": [{"id": MODEL}], "retrieval": {"evidence_sentences": 1}})
    svc = RagService(
        config,
        retriever,
        {MODEL: local_worker(Worker(config, MODEL, engine=ScriptedEngine("The Quux company maintains it.")))},
    )
    req = AnswerRequest(question=Question(text="Who maintains the Lim bridge?"), policy="single", max_tokens=16)
    if stream:
        events = _stream(svc, req)
        record = events[-1].record
        assert record is not None and "".join(ev.text for ev in events[:-1]) == record.answer
        assert events[-2].text.startswith("\n\nFrom the passages:\n[")
    else:
        record = asyncio.run(svc.answer(req))
    step = record.trace[-1]
    assert step["step"] == "evidence" and step["reasons"] == []
    assert [q["text"] for q in step["quotes"]] == ["The Lim bridge is maintained by the Quux company."]
    assert record.answer == (
        f"The Quux company maintains it.\n\nFrom the passages:\n[{step['quotes'][0]['passage']}] "
        "The Lim bridge is maintained by the Quux company."
    )


def test_a_short_answer_gets_no_line(service: Any) -> None:
    """`style: short` asks for the bare answer (the dev files' F1 scores it): no line under it, restated or not."""
    req = AnswerRequest(
        question=Question(text="Who maintains the Lim bridge?", style="short"), policy="single", max_tokens=16
    )
    record = asyncio.run(service(ScriptedEngine("The Lim bridge is maintained.")).answer(req))
    assert record.answer == "The Lim bridge is maintained."
