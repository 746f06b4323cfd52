"""The whole app on a real local Ray Serve (loopback, project temp dir), driven by the openai client.

It serves the embedded default's model ladder (SmolLM2-135M and Qwen2.5-Coder-0.5B, one worker each), so
`auto` routing between real models is tested end to end; the other tests keep SmolLM2 alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.metrics_text import sample_sum
from tests.utils import seed_index, start_serve

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.e2e, pytest.mark.model]

LADDER = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="module")
def served(base_config: dict[str, Any], session_tmp: Path, bundled_index: Path) -> Iterator[str]:
    from services.config import load_config
    from services.serve import local as serving

    ladder = {k: v for k, v in base_config.items() if k != "models"}
    config = {
        **ladder,
        # Two model workers take one logical CPU each, besides the gateway, router and retriever.
        "ray": {**base_config["ray"], "num_cpus": 4},
        "index": {"dir": str(session_tmp / "serve-index")},
        # No chunk KV computed ahead: the 0.5B model would spend minutes of both cores on the bundled corpus.
        "models": [{"id": m, "chunk_cache": {"precompute": False}} for m in LADDER],
    }
    assert [m.id for m in load_config(config).models] == list(LADDER)
    seed_index(bundled_index, config)
    try:
        yield start_serve(config)
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def oai(served: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_and_health(served: str, oai: Any) -> None:
    assert [m.id for m in oai.models.list().data] == ["auto", *LADDER, "all-minilm-l6-v2"]
    assert httpx.get(f"{served}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served}/readyz").json()
    assert ready["status"] == "ready" and all(ready["workers"][m]["ready"] for m in LADDER)
    assert ready["router"]["quality_table"] == "quality-v1", ready["router"]


def test_auto_routes_over_the_ladder_by_the_quality_table(served: str) -> None:
    body = {"question": "Is the Pacific the largest ocean?", "model": "auto", "policy": "adaptive", "max_tokens": 8}
    plan = httpx.post(f"{served}/v1/plan", json=body, timeout=60).json()["plan"]
    routing = plan["routing"]
    assert {c["model"] for c in routing["candidates"]} == set(LADDER)
    assert plan["model"] == routing["chosen"]["model"] and plan["complexity"]["policy"] == routing["chosen"]["policy"]
    rec = httpx.post(f"{served}/v1/qa", json=body, timeout=120).json()
    assert rec["model"] == plan["model"] and rec["answer"]
    # Each rung answers when it is asked for by name.
    for model in LADDER:
        rec = httpx.post(f"{served}/v1/qa", json={**body, "model": model, "policy": "none"}, timeout=120).json()
        assert rec["model"] == model and rec["plan"]["routing"] is None and rec["answer"]


def test_openai_client_non_streamed(oai: Any) -> None:
    resp = oai.chat.completions.create(
        model="auto", max_tokens=16, messages=[{"role": "user", "content": "What does Ragyard do?"}]
    )
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    u = resp.usage
    assert (
        u.prompt_tokens > 0
        and 0 < u.completion_tokens <= 16
        and u.total_tokens == u.prompt_tokens + u.completion_tokens
    )


def test_openai_client_streamed_with_usage(oai: Any) -> None:
    stream = oai.chat.completions.create(
        model="auto",
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.7,
        seed=5,
        messages=[{"role": "user", "content": "How do I run the tests?"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1


def test_openai_errors_surface_as_openai_exceptions(oai: Any) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as nf:
        oai.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert "does not exist" in nf.value.message
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="auto", max_tokens=100000, messages=[{"role": "user", "content": "hi"}])


def test_qa_documents_metrics_over_http(served: str) -> None:
    doc = {"title": "Quux", "text": "Zorblat is the capital of the kingdom of Quux."}
    added = httpx.post(f"{served}/v1/documents", json={"documents": [doc]}, timeout=60).json()
    assert len(added["added"]) == 1
    assert httpx.post(f"{served}/v1/documents", json={"documents": [doc]}, timeout=60).json()["added"] == []
    rec = httpx.post(
        f"{served}/v1/qa", json={"question": "What is the capital of Quux?", "max_tokens": 12}, timeout=120
    ).json()
    assert rec["answer"] and rec["citations"][0]["title"] == "Quux"
    assert {"retrieve_s", "prefill_s", "decode_s", "total_s"} <= set(rec["timings"])
    bad = httpx.post(f"{served}/v1/qa", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    too_long = httpx.post(f"{served}/v1/qa", json={"question": "word " * 1550, "max_tokens": 4}, timeout=120)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    metrics = httpx.get(f"{served}/metrics").text
    # The answer above was timed: at least one plan and one first token counted, over every replica's series.
    assert sample_sum(metrics, "ragyard_plan_seconds_count") >= 1
    assert sample_sum(metrics, "ragyard_ttft_seconds_count") >= 1


def test_the_rest_of_the_surface_under_serve(served: str, oai: Any) -> None:
    """Completions, embeddings, tokenize and the vector store search through Serve's handles, and one
    X-Request-Id on the response (Serve's proxy sets it; the gateway does not add a second)."""
    body = {"model": LADDER[0], "max_tokens": 2, "policy": "none", "messages": [{"role": "user", "content": "Hi"}]}
    resp = httpx.post(f"{served}/v1/chat/completions", json=body, headers={"X-Request-Id": "serve-rid-1"}, timeout=120)
    assert resp.status_code == 200 and resp.headers.get_list("x-request-id") == ["serve-rid-1"]
    made = httpx.get(f"{served}/healthz").headers.get_list("x-request-id")
    assert len(made) == 1 and made[0]
    done = oai.completions.create(model=LADDER[1], prompt="The capital of France is", max_tokens=3, temperature=0)
    assert done.choices[0].text and done.model == LADDER[1]
    vectors = oai.embeddings.create(model="all-minilm-l6-v2", input=["one", "two"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    tokens = httpx.post(f"{served}/tokenize", json={"model": LADDER[1], "prompt": "hello there"}).json()
    back = httpx.post(f"{served}/detokenize", json={"model": LADDER[1], "tokens": tokens["tokens"]}).json()
    assert tokens["count"] > 0 and back["prompt"] == "hello there"
    hits = list(oai.vector_stores.search(vector_store_id="shared", query="How do I run the tests?", max_num_results=2))
    assert 0 < len(hits) <= 2 and hits[0].content[0].text
