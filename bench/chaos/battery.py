"""The bad-input battery: requests no client should send, at every route and header, each with the status a
careful server answers. None may be a 5xx; after every ten, a normal request must still answer.

A case is a name, the request and the statuses it may get (one, unless the standards allow two: a wrong
method may be 404 or 405 depending on the route table). Keys are the scenario's own: ``TENANT_KEY`` (a
tenant on the `standard` tier, allowed to pick `batch`), ``OTHER_KEY`` (another tenant), ``OPERATOR_KEY``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

TENANT_KEY = "k-acme"
OTHER_KEY = "k-globex"
OPERATOR_KEY = "op-chaos"

CHAT = "/v1/chat/completions"
QA = "/v1/qa"
DOCS = "/v1/documents"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # shapes, encodings, nesting, sizes, numbers, roles, auth, sla, documents, routes, openai, schemas,
    # text, tenancy
    method: str
    path: str
    expect: frozenset[int]
    json_body: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    key: str | None = TENANT_KEY
    chunked: bool = False

    def request_headers(self) -> dict[str, str]:
        out = {"content-type": "application/json"} if self.json_body is not None or self.content is not None else {}
        if self.key is not None:
            out["authorization"] = f"Bearer {self.key}"
        out.update(self.headers)
        return out

    def body(self) -> bytes | None:
        if self.content is not None:
            return self.content
        if self.json_body is not None:
            return json.dumps(self.json_body).encode("utf-8")
        return None


def _chat(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "auto",
        "messages": [{"role": "user", "content": "What is Ragyard?"}],
        "max_tokens": 4,
        "policy": "none",
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def _multipart(files: list[tuple[str, str, bytes]], boundary: str = "ragyard-battery") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of ``files`` (name, content type, bytes) and its content-type header."""
    body = b""
    for name, media, raw in files:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: {media}\r\n\r\n"
            ).encode()
            + raw
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def normal_request() -> Case:
    """The request that must still answer between the bad ones."""
    return Case("normal", "normal", "POST", CHAT, frozenset({200}), _chat(max_tokens=2))


def cases() -> list[Case]:
    c: list[Case] = []

    def add(name: str, kind: str, method: str, path: str, expect: int | set[int], **kw: Any) -> None:
        c.append(Case(name, kind, method, path, frozenset({expect} if isinstance(expect, int) else expect), **kw))

    # -- shapes -------------------------------------------------------------------------------------
    add("chat: body is not JSON", "shapes", "POST", CHAT, 400, content=b"{not json")
    add("chat: body is a JSON array", "shapes", "POST", CHAT, 400, json_body=[_chat()])
    add("chat: body is a JSON string", "shapes", "POST", CHAT, 400, json_body="hello")
    add("chat: empty body", "shapes", "POST", CHAT, 400, content=b"")
    add("chat: no messages", "shapes", "POST", CHAT, 400, json_body=_chat(messages=...))
    add("chat: empty messages", "shapes", "POST", CHAT, 400, json_body=_chat(messages=[]))
    add("chat: messages is a string", "shapes", "POST", CHAT, 400, json_body=_chat(messages="hi"))
    add("chat: message without content", "shapes", "POST", CHAT, 400, json_body=_chat(messages=[{"role": "user"}]))
    add(
        "chat: content is a number",
        "shapes",
        "POST",
        CHAT,
        400,
        json_body=_chat(messages=[{"role": "user", "content": 7}]),
    )
    image = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]
    add("chat: image part", "shapes", "POST", CHAT, 400, json_body=_chat(messages=[{"role": "user", "content": image}]))
    add("chat: model is empty", "shapes", "POST", CHAT, 400, json_body=_chat(model=""))
    add("chat: unknown model", "shapes", "POST", CHAT, 404, json_body=_chat(model="gpt-9-ultra"))
    add("chat: unknown policy", "shapes", "POST", CHAT, 400, json_body=_chat(policy="telepathy"))
    add("chat: unknown style", "shapes", "POST", CHAT, 400, json_body=_chat(style="sonnet"))
    add("chat: stream is a list", "shapes", "POST", CHAT, 400, json_body=_chat(stream=[1]))
    add("chat: two choices", "shapes", "POST", CHAT, 400, json_body=_chat(n=2))
    # -- roles --------------------------------------------------------------------------------------
    add("chat: role tool", "roles", "POST", CHAT, 400, json_body=_chat(messages=[{"role": "tool", "content": "x"}]))
    add("chat: role wizard", "roles", "POST", CHAT, 400, json_body=_chat(messages=[{"role": "wizard", "content": "x"}]))
    add("chat: no role", "roles", "POST", CHAT, 400, json_body=_chat(messages=[{"content": "x"}]))
    add(
        "chat: only a system message",
        "roles",
        "POST",
        CHAT,
        400,
        json_body=_chat(messages=[{"role": "system", "content": "Be brief."}]),
    )
    # -- encodings ----------------------------------------------------------------------------------
    add("chat: invalid UTF-8", "encodings", "POST", CHAT, 400, content=b'{"model": "auto", "messages": "\xff\xfe"}')
    add("chat: UTF-16 body", "encodings", "POST", CHAT, 400, content=json.dumps(_chat()).encode("utf-16"))
    add("chat: UTF-16, 5,000 deep", "encodings", "POST", CHAT, 400, content=_nested(5000).encode("utf-16"))
    add("chat: UTF-32 body", "encodings", "POST", CHAT, 400, content=json.dumps(_chat()).encode("utf-32"))
    add("chat: NaN literal", "encodings", "POST", CHAT, 400, content=json.dumps(_chat()).replace("4", "NaN").encode())
    add(
        "documents: text/plain not UTF-8",
        "encodings",
        "POST",
        DOCS,
        400,
        content=b"\xc3\x28 broken",
        headers={"content-type": "text/plain"},
    )
    add(
        "documents: unknown media type",
        "encodings",
        "POST",
        DOCS,
        415,
        content=b"%PDF-1.7",
        headers={"content-type": "application/x-shockwave-flash"},
    )
    # -- nesting ------------------------------------------------------------------------------------
    add("chat: 5,000-deep JSON", "nesting", "POST", CHAT, 400, content=_nested(5000).encode())
    deep_meta = '{"documents": [{"text": "x", "metadata": {"a": ' + _nested(700) + "}}]}"
    add("documents: 700-deep metadata", "nesting", "POST", DOCS, 400, content=deep_meta.encode())
    add(
        "documents: 5-level metadata",
        "nesting",
        "POST",
        DOCS,
        400,
        json_body={"documents": [{"text": "x", "metadata": {"a": {"b": {"c": {"d": {"e": 1}}}}}}]},
    )
    # -- sizes --------------------------------------------------------------------------------------
    big = json.dumps(_chat(messages=[{"role": "user", "content": "x" * 2_200_000}])).encode()
    add("chat: 2.2 MB body", "sizes", "POST", CHAT, 413, content=big)
    add("chat: 1.3 MB chunked body", "sizes", "POST", CHAT, 413, content=big[:1_300_000], chunked=True)
    add(
        "chat: 513 messages",
        "sizes",
        "POST",
        CHAT,
        400,
        json_body=_chat(messages=[{"role": "user", "content": "x"}] * 513),
    )
    parts = [{"type": "text", "text": "x"}] * 65
    add(
        "chat: 65 content parts",
        "sizes",
        "POST",
        CHAT,
        400,
        json_body=_chat(messages=[{"role": "user", "content": parts}]),
    )
    add("qa: 9,000-character question", "sizes", "POST", QA, 400, json_body={"question": "why " * 2250})
    add("qa: empty question", "sizes", "POST", QA, 400, json_body={"question": ""})
    add(
        "documents: 9 KB metadata",
        "sizes",
        "POST",
        DOCS,
        400,
        json_body={"documents": [{"text": "x", "metadata": {"blob": "m" * 9000}}]},
    )
    add(
        "documents: 600-character id",
        "sizes",
        "POST",
        DOCS,
        400,
        json_body={"documents": [{"id": "i" * 600, "text": "x"}]},
    )
    add("documents: none", "sizes", "POST", DOCS, 400, json_body={"documents": []})
    # -- numbers ------------------------------------------------------------------------------------
    add("chat: max_tokens 0", "numbers", "POST", CHAT, 400, json_body=_chat(max_tokens=0))
    add("chat: max_tokens -5", "numbers", "POST", CHAT, 400, json_body=_chat(max_tokens=-5))
    add("chat: max_tokens 1.5", "numbers", "POST", CHAT, 400, json_body=_chat(max_tokens=1.5))
    add("chat: max_tokens a word", "numbers", "POST", CHAT, 400, json_body=_chat(max_tokens="ten"))
    add("chat: max_tokens 10^30", "numbers", "POST", CHAT, 400, json_body=_chat(max_tokens=10**30))
    add("chat: temperature 5", "numbers", "POST", CHAT, 400, json_body=_chat(temperature=5))
    add("chat: top_p 0", "numbers", "POST", CHAT, 400, json_body=_chat(top_p=0))
    add("chat: seed 2^70", "numbers", "POST", CHAT, 400, json_body=_chat(seed=2**70))
    add("chat: top_k 0", "numbers", "POST", CHAT, 400, json_body=_chat(top_k=0))
    add("documents: list limit 0", "numbers", "GET", DOCS, 400, params={"limit": "0"})
    add("documents: list limit a word", "numbers", "GET", DOCS, 400, params={"limit": "many"})
    # -- auth header forms --------------------------------------------------------------------------
    add("auth: no header", "auth", "POST", CHAT, 401, json_body=_chat(), key=None)
    for name, header in (("Bearer and nothing", "Bearer"), ("Basic scheme", "Basic dXNlcjpwYXNz")):
        add(f"auth: {name}", "auth", "POST", CHAT, 401, json_body=_chat(), key=None, headers={"authorization": header})
    add("auth: wrong key", "auth", "POST", CHAT, 401, json_body=_chat(), key="k-nobody")
    add("auth: key and junk", "auth", "POST", CHAT, 401, json_body=_chat(), key=f"{TENANT_KEY} extra")
    add("auth: 8 KB key", "auth", "POST", CHAT, 401, json_body=_chat(), key="k" * 8000)
    add("auth: tenant key on /metrics", "auth", "GET", "/metrics", 403)
    add("auth: tenant key on /openapi.json", "auth", "GET", "/openapi.json", 403)
    # -- SLA headers --------------------------------------------------------------------------------
    sla_cases: list[tuple[str, int, dict[str, str]]] = [
        ("unknown tier", 400, {"x-sla-tier": "platinum"}),
        ("a tier above the tenant's", 403, {"x-sla-tier": "interactive"}),
        ("latency a word", 400, {"x-slo-latency-ms": "soon"}),
        ("latency negative", 400, {"x-slo-latency-ms": "-1"}),
        ("latency looser than the tier", 403, {"x-slo-latency-ms": "999999999"}),
        ("budget tokens a word", 400, {"x-budget-tokens": "lots"}),
        ("budget below any plan", 400, {"x-budget-tokens": "1"}),
        ("a lower tier does not bring its larger cap", 403, {"x-sla-tier": "batch", "x-budget-tokens": "9000"}),
    ]
    for name, status, headers in sla_cases:
        add(f"sla: {name}", "sla", "POST", CHAT, status, json_body=_chat(), headers=headers)
    # -- documents ----------------------------------------------------------------------------------
    add("documents: no text", "documents", "POST", DOCS, 400, json_body={"documents": [{"title": "t"}]})
    add(
        "documents: unknown type",
        "documents",
        "POST",
        DOCS,
        415,
        json_body={"documents": [{"text": "x", "type": "exe"}]},
    )
    add(
        "documents: broken JSONL line",
        "documents",
        "POST",
        DOCS,
        400,
        content=b'{"text": "ok"}\n{"text": \n',
        headers={"content-type": "application/jsonl"},
    )
    add(
        "documents: another tenant's namespace",
        "documents",
        "POST",
        DOCS,
        403,
        json_body={"documents": [{"text": "x"}]},
        params={"namespace": "globex"},
    )
    pdf = {"content-type": "application/pdf"}
    docx = {"content-type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}
    add("documents: a PDF that is not one", "documents", "POST", DOCS, 400, content=b"hello", headers=pdf)
    add(
        "documents: a PDF cut after its header",
        "documents",
        "POST",
        DOCS,
        400,
        content=b"%PDF-1.7\n1 0 obj",
        headers=pdf,
    )
    add("documents: a .docx that is not a zip", "documents", "POST", DOCS, 400, content=b"PK\x03\x04 cut", headers=docx)
    add(
        "documents: an HTML page of scripts",
        "documents",
        "POST",
        DOCS,
        400,
        content=b"<html><body><script>steal()</script></body></html>",
        headers={"content-type": "text/html"},
    )
    add(
        "documents: the old binary .doc",
        "documents",
        "POST",
        DOCS,
        415,
        content=b"\xd0\xcf\x11\xe0",
        headers={"content-type": "application/msword"},
    )
    one_bad, mixed = _multipart(
        [("notes.txt", "text/plain", b"Good notes."), ("broken.pdf", "application/pdf", b"%PDF-1.7\n")]
    )
    add(
        "documents: multipart with a broken PDF beside a good file",
        "documents",
        "POST",
        DOCS,
        400,
        content=one_bad,
        headers=mixed,
    )
    no_file = b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n--b--\r\n'
    form = {"content-type": "multipart/form-data; boundary=b"}
    add("documents: multipart with no file", "documents", "POST", DOCS, 400, content=no_file, headers=form)
    add("documents: multipart cut mid-part", "documents", "POST", DOCS, 400, content=b"--b\r\nnot a part", headers=form)
    add("documents: read another namespace", "documents", "GET", DOCS, 403, params={"namespace": "globex"})
    add("documents: unknown id", "documents", "GET", f"{DOCS}/no-such-document", 404)
    add("documents: unknown ingestion job", "documents", "GET", f"{DOCS}/jobs/job-00000000", 404)
    add("documents: ingestion job id of another shape", "documents", "GET", f"{DOCS}/jobs/%2e%2e%2fsecrets", 404)
    add("documents: delete a shared document", "documents", "DELETE", f"{DOCS}/file:README.md", 403)
    add("documents: path traversal", "documents", "GET", f"{DOCS}/../../etc/passwd", 404)
    # -- routes and browsers ------------------------------------------------------------------------
    add("routes: GET on chat", "routes", "GET", CHAT, 405)
    add("routes: PUT on documents", "routes", "PUT", DOCS, 405, json_body={"documents": []})
    add("routes: unknown route", "routes", "GET", "/v1/nothing-here", 404)
    add(
        "routes: foreign Origin",
        "routes",
        "POST",
        CHAT,
        403,
        json_body=_chat(),
        headers={"origin": "https://evil.example"},
    )
    add("routes: foreign Host", "routes", "GET", "/v1/models", 403, headers={"host": "evil.example"})
    add("routes: plan with a bad policy", "routes", "POST", "/v1/plan", 400, json_body={"question": "q", "policy": "x"})
    # -- the rest of the OpenAI surface ---------------------------------------------------------------
    for name, key, value in (
        ("a tool", "tools", [{"type": "function", "function": {"name": "f"}}]),
        ("logit_bias", "logit_bias", {"1": 5}),
        ("more logprobs than 20", "top_logprobs", 21),
        ("top_logprobs without logprobs", "top_logprobs", 2),
        ("a penalty over 2", "frequency_penalty", 2.5),
        (
            "a schema that is not one",
            "response_format",
            {"type": "json_schema", "json_schema": {"schema": {"type": 7}}},
        ),
        ("an unknown response_format", "response_format", {"type": "yaml"}),
    ):
        add(f"openai: chat with {name}", "openai", "POST", CHAT, 400, json_body=_chat(**{key: value}))
    completion = {"model": "auto", "prompt": "Hello", "max_tokens": 2}
    completions: tuple[tuple[str, dict[str, Any]], ...] = (
        ("no prompt", {"prompt": None}),
        ("token ids", {"prompt": [1, 2, 3]}),
        ("a batch", {"prompt": ["a", "b"]}),
        ("echo", {"echo": True}),
        ("best_of 3", {"best_of": 3}),
    )
    for name, extra in completions:
        add(
            f"openai: completion with {name}",
            "openai",
            "POST",
            "/v1/completions",
            400,
            json_body={**completion, **extra},
        )
    embedding = {"model": "auto", "input": "hello"}
    embeddings: tuple[tuple[str, dict[str, Any]], ...] = (
        ("token ids", {"input": [[1, 2]]}),
        ("an empty text", {"input": [""]}),
        ("other dimensions", {"dimensions": 7}),
        ("an unknown encoding", {"encoding_format": "hex"}),
    )
    for name, extra in embeddings:
        add(
            f"openai: embeddings with {name}", "openai", "POST", "/v1/embeddings", 400, json_body={**embedding, **extra}
        )
    add(
        "openai: embeddings of another model",
        "openai",
        "POST",
        "/v1/embeddings",
        404,
        json_body={**embedding, "model": "ada"},
    )
    add("openai: tokenize neither prompt nor messages", "openai", "POST", "/tokenize", 400, json_body={"model": "auto"})
    add("openai: detokenize an id out of range", "openai", "POST", "/detokenize", 400, json_body={"tokens": [2**40]})
    search = "/v1/vector_stores/shared/search"
    add(
        "openai: search with filters",
        "openai",
        "POST",
        search,
        400,
        json_body={"query": "x", "filters": {"type": "eq"}},
    )
    add(
        "openai: search with a threshold that is a word",
        "openai",
        "POST",
        search,
        400,
        json_body={"query": "x", "ranking_options": {"score_threshold": "high"}},
    )
    add(
        "openai: search another tenant's store",
        "openai",
        "POST",
        "/v1/vector_stores/globex/search",
        404,
        json_body={"query": "x"},
    )
    add("openai: a request id with spaces", "openai", "GET", "/v1/models", 400, headers={"x-request-id": "a b"})
    hostile(add)
    return c


def fan_out_schema(width: int = 5, depth: int = 6) -> dict[str, Any]:
    """About a kilobyte of schema whose $refs expand to width**depth nodes."""
    defs: dict[str, Any] = {
        f"d{i}": {"type": "object", "properties": {f"p{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(width)}}
        for i in range(depth)
    }
    defs[f"d{depth}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


# 20 characters whose state machine has 2**21 states: minutes of one core for the enforcer that builds it.
EXPLODING_PATTERN = "(a|b)*a(a|b){20}"


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def hostile(add: Any) -> None:
    """What a hostile client sends to make a worker work without bound or to learn what it should not: schemas
    that expand or compile without bound, or that the engines would drop silently; text that is not Unicode;
    JSON values that are not JSON; temperatures that overflow; batches over their bounds in tokens."""
    lone = "hi \ud800 there"  # a lone surrogate: json.dumps writes it as the escape \ud800, which parsers accept
    for name, schema in (
        ("refs that fan out to 15,625 nodes", fan_out_schema()),
        ("a ref that loops", {"$defs": {"a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}},
                              "$ref": "#/$defs/a"}),
        ("a ref that does not resolve", {"type": "object", "properties": {"x": {"$ref": "#/$defs/none"}}}),
        ("a remote ref", {"type": "object", "properties": {"x": {"$ref": "http://169.254.169.254/"}}}),
        ("an empty property schema", {"type": "object", "properties": {"x": {}}}),
        ("allOf", {"type": "object", "allOf": [{"type": "object"}]}),
        ("uniqueItems", {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        ("a pattern with a length bound", {"type": "string", "pattern": "[a-z]+", "maxLength": 3}),
        ("an exploding pattern", {"type": "object", "properties": {"p": {"type": "string",
                                                                           "pattern": EXPLODING_PATTERN}}}),
        ("a 1,000-character pattern", {"type": "string", "pattern": "a" * 1000}),
        ("a backreference", {"type": "string", "pattern": "(a)\\1"}),
    ):  # fmt: skip
        add(
            f"schemas: chat with {name}", "schemas", "POST", CHAT, 400, json_body=_chat(response_format=_schema(schema))
        )
    text_routes: tuple[tuple[str, str, dict[str, Any]], ...] = (
        ("chat", CHAT, _chat(messages=[{"role": "user", "content": lone}])),
        ("completion", "/v1/completions", {"model": "auto", "prompt": lone, "max_tokens": 2}),
        ("embeddings", "/v1/embeddings", {"model": "auto", "input": ["ok", lone]}),
        ("qa", QA, {"question": lone, "policy": "none", "max_tokens": 2}),
        ("tokenize", "/tokenize", {"model": "auto", "prompt": lone}),
        ("documents", DOCS, {"documents": [{"text": lone}]}),
        ("search", "/v1/vector_stores/shared/search", {"query": lone}),
        ("a key", CHAT, {**_chat(), "\udc00": 1}),
    )
    for name, path, body in text_routes:
        raw = json.dumps(body)  # ASCII: the surrogate goes as its escape
        add(f"text: a lone surrogate in {name}", "text", "POST", path, 400, content=raw.encode("utf-8"))
    jsonl = json.dumps({"id": "ok", "text": "fine"}) + "\n" + json.dumps({"id": "bad", "text": lone}) + "\n"
    add("text: a lone surrogate in a JSONL line", "text", "POST", DOCS, 400, content=jsonl.encode("utf-8"),
        headers={"content-type": "application/jsonl"})  # fmt: skip
    for constant in ("NaN", "Infinity"):
        raw = json.dumps(_chat()).replace('"max_tokens": 4', f'"max_tokens": 4, "temperature": {constant}')
        add(f"numbers: temperature {constant}", "numbers", "POST", CHAT, 400, content=raw.encode("utf-8"))
    add("numbers: temperature 5e-324 (greedy)", "numbers", "POST", CHAT, 200, json_body=_chat(temperature=5e-324))
    add("numbers: completion temperature 1e-300", "numbers", "POST", "/v1/completions", 200,
        json_body={"model": "auto", "prompt": "Hello", "max_tokens": 2, "temperature": 1e-300})  # fmt: skip
    long_inputs = ["bridges rivers ferries " * 90] * 300  # 300 x 256 tokens in 620 KB: over the token budget
    add("sizes: embeddings over the token budget", "sizes", "POST", "/v1/embeddings", 400,
        json_body={"model": "auto", "input": long_inputs})  # fmt: skip
    many = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(10_001))
    add("sizes: JSONL of 10,001 documents", "sizes", "POST", DOCS, 400, content=many.encode("utf-8"),
        headers={"content-type": "application/jsonl"})  # fmt: skip
    twice = '{"id": "same", "text": "one"}\n{"id": "same", "text": "two"}\n'
    add("documents: one id twice, differently, in JSONL", "documents", "POST", DOCS, 400,
        content=twice.encode("utf-8"), headers={"content-type": "application/jsonl"})  # fmt: skip
    add("documents: one id twice, differently, in JSON", "documents", "POST", DOCS, 400,
        json_body={"documents": [{"id": "same", "text": "one"}, {"id": "same", "text": "two"}]})  # fmt: skip
    # Ids are scoped to a namespace: another tenant's id is the writer's own document (no 403 that says it
    # exists), each tenant reads and deletes its own, and neither learns of the other's.
    probe = f"{DOCS}/tenancy-probe"
    mine = {"documents": [{"id": "tenancy-probe", "text": "The acme probe document."}]}
    theirs = {"documents": [{"id": "tenancy-probe", "text": "The globex probe document."}]}
    add("tenancy: another tenant writes an id", "tenancy", "POST", DOCS, 200, json_body=theirs, key=OTHER_KEY)
    add("tenancy: the same id is this tenant's own", "tenancy", "POST", DOCS, 200, json_body=mine)
    add("tenancy: each deletes its own", "tenancy", "DELETE", probe, 200, key=OTHER_KEY)
    add("tenancy: the other's is gone, this one's stays", "tenancy", "DELETE", probe, 404, key=OTHER_KEY)
    add("tenancy: and this one's goes", "tenancy", "DELETE", probe, 200)
    add("tenancy: a generation no write reached", "tenancy", "GET", DOCS, 400,
        headers={"x-ragyard-min-generation": "999999999"})  # fmt: skip


def batches(all_cases: list[Case], size: int = 10) -> Iterator[list[Case]]:
    for i in range(0, len(all_cases), size):
        yield all_cases[i : i + size]
