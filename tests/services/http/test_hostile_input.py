"""Input a hostile client sends, at the HTTP edge on the scripted engine and the hashing embedder: text that is
not valid Unicode, JSON values that are not JSON, temperatures that would overflow, uploads whose format or ids
disagree with the rules, a tenant's view of the SLA status, and the static files' headers. Each is a clear 4xx
in the OpenAI error shape (or is honoured), never a 500, and nothing stored changes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from router.sla import PolicyStore
from services.http.app import create_app
from services.pipeline import RagService
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder

MODEL = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"
LONE = '"hi \\ud800 there"'  # a JSON escape of a lone surrogate: Python's parser accepts it, no tokenizer does
POLICY = (
    "default_tier: standard\ntiers: {standard: {priority: 1, latency_ms: 600000}}\n"
    "tenants: {acme: {api_keys: [k-acme], tier: standard}, zed: {api_keys: [k-zed], tier: standard}}\n"
)


@pytest.fixture(scope="module")
def engine() -> ScriptedEngine:
    return ScriptedEngine("Zorblat is the capital.")


@pytest.fixture(scope="module")
def client(hashing_embedder: Any, engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("hostile")
    policy = tmp / "sla.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    # The SLA controller on, with the policy's tenants: the edge and the router read the same file.
    config = scripted_config(tmp / "index", sla={"enabled": True, "policy_path": str(policy)})
    svc: RagService = scripted_service(config, hashing_embedder, engine)
    app = create_app(svc, api_keys=["op"], sla_policy=PolicyStore(policy, reload_interval_s=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, svc


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code and set(err) == {"message", "type", "param", "code"}, err
    return err


def _raw(c: TestClient, path: str, body: str, key: str = "op", media: str | None = "application/json") -> Any:
    headers = {"authorization": f"Bearer {key}"}
    if media is not None:
        headers["content-type"] = media
    return c.post(path, content=body.encode("utf-8"), headers=headers)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (CHAT, '{"model": "auto", "messages": [{"role": "user", "content": %s}]}', "messages[0].content"),
        ("/v1/completions", '{"model": "auto", "prompt": %s}', "prompt"),
        ("/v1/embeddings", '{"model": "auto", "input": ["ok", %s]}', "input[1]"),
        ("/v1/qa", '{"question": %s}', "question"),
        ("/tokenize", '{"model": "auto", "prompt": %s}', "prompt"),
        ("/v1/documents", '{"documents": [{"text": %s}]}', "documents[0].text"),
        ("/v1/vector_stores/shared/search", '{"query": %s}', "query"),
    ],
)
def test_text_that_is_not_unicode_is_a_400_naming_the_field(client: Any, path: str, body: str, field: str) -> None:
    c, _ = client
    before = c.get("/v1/documents", headers={"authorization": "Bearer op"}).json()["data"]
    err = _error(_raw(c, path, body.replace("%s", LONE)), 400, "invalid_text")
    assert err["param"] == field and field in err["message"]
    # With no content type FastAPI parses JSON all the same, so the guard reads it too.
    assert _raw(c, path, body.replace("%s", LONE), media=None).json()["error"]["code"] == "invalid_text"
    assert c.get("/v1/documents", headers={"authorization": "Bearer op"}).json()["data"] == before


def test_a_lone_surrogate_in_a_key_or_a_jsonl_line_is_refused(client: Any) -> None:
    c, _ = client
    err = _error(_raw(c, CHAT, '{"model": "auto", "\\udc00": 1, "messages": []}'), 400, "invalid_text")
    assert err["param"] == "\\udc00"
    line = '{"id": "a", "text": %s}'.replace("%s", LONE)
    resp = _raw(c, "/v1/documents", f'{{"id": "b", "text": "fine"}}\n{line}\n', media="application/jsonl")
    assert resp.status_code == 400 and "line 2" in resp.json()["error"]["message"]
    assert "not valid Unicode" in resp.json()["error"]["message"]
    got = c.get("/v1/documents/b", headers={"authorization": "Bearer op"})
    assert got.status_code == 404  # the batch was refused whole


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(client: Any, constant: str) -> None:
    c, _ = client
    body = '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": T}'.replace("T", constant)
    assert "not a JSON value" in _error(_raw(c, CHAT, body), 400, "invalid_json")["message"]
    jsonl = '{"text": "x", "metadata": {"n": %s}}\n'.replace("%s", constant)
    assert _raw(c, "/v1/documents", jsonl, media="application/jsonl").status_code == 400


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-9, 9.9e-6])
def test_a_temperature_near_zero_is_greedy_not_nan(client: Any, temperature: float) -> None:
    import torch

    from retrieval.generation import SamplingParams
    from services.http.schemas import ChatCompletionRequest
    from services.workers.spec.verify import sample_token

    c, _ = client
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Capital?"}], "temperature": temperature}
    assert ChatCompletionRequest.model_validate(body).temperature == 0.0
    params = SamplingParams(temperature=temperature)
    assert params.greedy  # so the engines take the argmax: dividing by it would overflow to NaN
    logits = torch.tensor([0.5, 3.0, -1.0, float("-inf")])
    assert sample_token(logits, params, torch.Generator().manual_seed(0)) == 1
    resp = c.post(CHAT, json={**body, "policy": "none", "max_tokens": 8}, headers={"authorization": "Bearer op"})
    assert resp.status_code == 200, resp.text


def test_one_rule_for_an_id_given_twice_in_a_batch_on_every_format(client: Any) -> None:
    c, _ = client
    op = {"authorization": "Bearer op"}
    same = {"documents": [{"id": "twice", "text": "Alpha."}, {"id": "twice", "text": "Alpha."}]}
    assert c.post("/v1/documents", json=same, headers=op).json()["added"] == ["twice"]
    differ = {"documents": [{"id": "dup", "text": "Alpha."}, {"id": "dup", "text": "Beta."}]}
    assert "given twice" in _error(c.post("/v1/documents", json=differ, headers=op), 400, "invalid_document")["message"]
    jsonl = '{"id": "dup", "text": "Alpha."}\n{"id": "dup", "text": "Beta."}\n'
    resp = _raw(c, "/v1/documents", jsonl, media="application/jsonl")
    assert "given twice" in _error(resp, 400, "invalid_document")["message"]
    assert c.get("/v1/documents/dup", headers=op).status_code == 404  # neither kept


def test_a_jsonl_upload_is_capped_in_documents_like_a_json_one(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import services.http.documents as documents

    c, _ = client
    monkeypatch.setattr(documents, "MAX_DOCUMENTS", 3)
    lines = "".join(json.dumps({"id": f"cap-{i}", "text": f"Line {i}."}) + "\n" for i in range(4))
    err = _error(_raw(c, "/v1/documents", lines, media="application/jsonl"), 400, "invalid_document")
    assert "more than 3 documents" in err["message"] and "line 4" in err["message"]
    # A JSON list of JSONL payloads counts every document in it.
    two = "".join(json.dumps({"text": f"Pair {i}."}) + "\n" for i in range(2))
    body = {"documents": [{"text": two, "type": "jsonl"}, {"text": two.replace("Pair", "Twin"), "type": "jsonl"}]}
    resp = c.post("/v1/documents", json=body, headers={"authorization": "Bearer op"})
    assert "more than" in _error(resp, 400, "invalid_document")["message"]
    assert c.get("/v1/documents/cap-0", headers={"authorization": "Bearer op"}).status_code == 404


def test_a_tenants_sla_status_shows_nothing_of_other_tenants_traffic(client: Any) -> None:
    c, _ = client
    mine = c.get("/v1/sla", headers={"authorization": "Bearer k-acme"}).json()
    assert mine["caller"] == "acme" and set(mine["tenants"]) == {"acme"}
    for private in ("in_flight", "backlog_s", "estimates", "slo_attainment", "calibration", "policy_status"):
        assert private not in mine, private
    assert "sla.yaml" not in json.dumps(mine)  # the operator's file is not named
    everything = c.get("/v1/sla", headers={"authorization": "Bearer op"}).json()
    assert "in_flight" in everything and everything["policy_status"]["source"].endswith("sla.yaml")


def test_an_unknown_generation_does_not_say_how_many_writes_there_were(client: Any) -> None:
    c, _ = client
    resp = c.get("/v1/documents", headers={"authorization": "Bearer k-zed", "x-ragyard-min-generation": "999999"})
    err = resp.json()["error"]
    assert resp.status_code in (400, 409) and "999999" in err["message"]
    assert "newest" not in err["message"] and not any(ch.isdigit() for ch in err["message"].replace("999999", ""))


@pytest.mark.parametrize("path", ["/", "/web/index.html", "/web/app.js", "/web/style.css"])
def test_every_page_path_carries_the_security_headers(client: Any, path: str) -> None:
    c, _ = client
    resp = c.get(path)
    assert resp.status_code == 200
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff"


def _schema_chat(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "JSON, please."}],
        "policy": "none",
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }


def test_a_schema_over_its_work_budget_never_reaches_an_engine(client: Any, engine: ScriptedEngine) -> None:
    c, _ = client
    defs: dict[str, Any] = {
        f"d{i}": {"type": "object", "properties": {f"p{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(5)}}
        for i in range(6)
    }
    defs["d6"] = {"type": "string"}
    prompts = len(engine.prompts)
    resp = c.post(
        CHAT, json=_schema_chat({"$defs": defs, "$ref": "#/$defs/d0"}), headers={"authorization": "Bearer op"}
    )
    assert "max_nodes" in _error(resp, 400, "response_format_too_complex")["message"]
    loops = {"$defs": {"a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}}, "$ref": "#/$defs/a"}
    resp = c.post(CHAT, json=_schema_chat(loops), headers={"authorization": "Bearer op"})
    assert "refers back to itself" in _error(resp, 400, "unsupported_schema")["message"]
    assert len(engine.prompts) == prompts  # neither reached the engine


def test_a_small_request_is_answered_while_a_hostile_pattern_is_checked(client: Any) -> None:
    import threading
    import time

    c, _ = client
    op = {"authorization": "Bearer op"}
    hostile = _schema_chat({"type": "object", "properties": {"p": {"type": "string", "pattern": "(a|b)*a(a|b){24}"}}})
    ended: dict[str, float] = {}

    def send_hostile() -> None:
        ended["status"] = c.post(CHAT, json=hostile, headers=op).status_code
        ended["hostile"] = time.monotonic()

    thread = threading.Thread(target=send_hostile)
    thread.start()
    time.sleep(0.1)  # the hostile pattern's process is running
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Capital?"}], "policy": "none", "max_tokens": 8}
    assert c.post(CHAT, json=ask, headers=op).status_code == 200
    small = time.monotonic()
    thread.join(timeout=30)
    assert ended["status"] == 400
    assert small < ended["hostile"]  # the small one did not wait for the hostile one's check


def test_an_answer_that_breaks_its_response_format_is_an_error_not_a_200(client: Any, engine: ScriptedEngine) -> None:
    """The scripted engine does not constrain its output: its plain text stands for an engine whose constraint
    gave up part way. The request ends with an error, in one piece and in a stream, never a 200 of broken JSON."""
    c, _ = client
    op = {"authorization": "Bearer op"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "JSON, please."}],
        "policy": "none",
        "max_tokens": 16,
        "response_format": {"type": "json_object"},
    }
    resp = c.post(CHAT, json=body, headers=op)
    assert resp.status_code == 500, resp.text
    err = resp.json()["error"]
    assert err["code"] == "response_format_not_met" and "not JSON" in err["message"]
    with c.stream("POST", CHAT, json={**body, "stream": True}, headers=op) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    assert events[-1]["error"]["code"] == "response_format_not_met"
    assert not any(e.get("choices", [{}])[0].get("finish_reason") == "stop" for e in events if "choices" in e)
    reply = engine.reply
    engine.reply = '{"capital": "Zorblat"}'
    try:
        assert c.post(CHAT, json=body, headers=op).status_code == 200
    finally:
        engine.reply = reply


def test_embeddings_and_uploads_are_bounded_in_tokens_before_any_embedding(
    hashing_embedder: Any, tmp_path: Path
) -> None:
    config = scripted_config(
        tmp_path / "index", embedder={"max_tokens_per_request": 40}, index={"dir": str(tmp_path / "index"),
                                                                          "max_tokens_per_upload": 60}
    )  # fmt: skip
    svc = scripted_service(config, hashing_embedder, ScriptedEngine("ok"))
    with TestClient(create_app(svc)) as c:
        embedded = hashing_embedder.encoded
        resp = c.post("/v1/embeddings", json={"model": "auto", "input": ["one two three " * 10] * 2})
        err = _error(resp, 400, "input_too_large")
        assert "max_tokens_per_request" in err["message"] and err["param"] == "input"
        assert hashing_embedder.encoded == embedded  # refused before the model ran
        assert c.post("/v1/embeddings", json={"model": "auto", "input": ["one two three"]}).status_code == 200
        big = {"documents": [{"id": "big", "text": "word " * 61}]}
        assert "max_tokens_per_upload" in _error(c.post("/v1/documents", json=big), 400, "invalid_document")["message"]
        assert c.get("/v1/documents/big").status_code == 404
        assert c.post("/v1/documents", json={"documents": [{"id": "ok", "text": "word " * 20}]}).status_code == 200


def test_a_client_that_leaves_before_its_answer_cancels_the_generation(hashing_embedder: Any, tmp_path: Path) -> None:
    """A non-streaming chat whose client disconnects stops generating at the engine's next step (Starlette alone
    would run it to its end), and nothing is sent to the client that left."""
    hold = threading.Event()  # the engine waits after its first token until this is set: it never is here
    engine = ScriptedEngine("one two three four five", hold=hold)
    svc = scripted_service(scripted_config(tmp_path / "index"), hashing_embedder, engine)
    app = create_app(svc)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "Count."}], "policy": "none"})
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        leave = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body.encode(), "more_body": False}
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {},
        }  # fmt: skip
        call = asyncio.ensure_future(app(scope, receive, send))
        for _ in range(1000):
            if engine.prompts:
                break
            await asyncio.sleep(0.005)
        assert engine.prompts and not call.done()  # generating, held after its first token
        leave.set()
        await asyncio.wait_for(call, 10)

    asyncio.run(run())
    assert engine.stopped == 1 and not hold.is_set()
    assert not any(m["type"] == "http.response.start" for m in sent)
