"""A property-based fuzzer over the whole HTTP surface (schemathesis over the app's own OpenAPI schema, on
Hypothesis): for every operation, bounded examples generated from its schema, valid and not, sent in-process to
the app on the scripted engine and the hashing embedder. No answer may be a 5xx, and a normal request right
after each one is answered. Deterministic (derandomised), so a find reproduces; each find is fixed with a test
of its own (tests/services/http/test_hostile_input.py)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.http.app import create_app
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

# In-process (the scripted engine and the hashing embedder); not traced for coverage (pytest-cov's no_cover):
# under the tracer the generators run three times slower, and the lines they reach are covered by the other tests.
pytestmark = [pytest.mark.unit, pytest.mark.no_cover]

# Examples per operation: a bound that keeps the whole run under a minute here (RAGYARD_FUZZ_EXAMPLES for more).
EXAMPLES = int(os.environ.get("RAGYARD_FUZZ_EXAMPLES", "12"))
# Bodies with one hostile value, over every JSON route together (RAGYARD_FUZZ_MUTATIONS for more).
MUTATIONS = int(os.environ.get("RAGYARD_FUZZ_MUTATIONS", "600"))
MODEL = "smollm2-135m-instruct"
NORMAL = {"model": MODEL, "messages": [{"role": "user", "content": "Capital?"}], "policy": "none", "max_tokens": 4}
SENT: Counter[str] = Counter()


def _app() -> Any:
    """The app under fuzz, built at import (schemathesis parametrises from its schema at collection): the
    scripted engine, the hashing embedder, an index in a temp dir of its own, the response cache on."""
    from tests.fakes import HashingEmbedder

    tmp = Path(tempfile.mkdtemp(prefix="ragyard-fuzz-"))
    config = scripted_config(tmp / "index", cache={"response_cache_url": "memory://"})
    svc = scripted_service(config, HashingEmbedder(), ScriptedEngine("Zorblat is the capital."))
    return create_app(svc)


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(APP, raise_server_exceptions=False) as c:
        yield c


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_5xx_and_the_next_request_is_answered(case: Any, client: TestClient) -> None:
    SENT[f"{case.method} {case.path}"] += 1
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.status_code, response.text[:500])
    after = client.post("/v1/chat/completions", json=NORMAL)
    assert after.status_code == 200, after.text


# Valid bodies of the routes that read JSON; the mutation fuzzer below replaces one value in one of them.
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {**NORMAL, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "seed": 7},
    "/v1/completions": {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0.7},
    "/v1/embeddings": {"model": "auto", "input": ["one", "two"], "encoding_format": "float"},
    "/v1/qa": {"question": "What is Zorblat?", "policy": "single", "top_k": 2, "max_tokens": 4},
    "/v1/plan": {"question": "What is Zorblat?", "policy": "none"},
    "/tokenize": {"model": MODEL, "prompt": "hello"},
    "/v1/documents": {"documents": [{"id": "fz", "title": "T", "text": "Zorblat.", "metadata": {"k": "v"}}]},
    "/v1/vector_stores/shared/search": {"query": "Zorblat", "max_num_results": 3},
}


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _replace(body: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    out = dict(body) if isinstance(body, dict) else list(body)
    out[path[0]] = _replace(body[path[0]], path[1:], new)
    return out


HOSTILE_VALUES = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.floats(allow_nan=True, allow_infinity=True),  # json.dumps writes NaN and Infinity as Python does
    st.floats(min_value=0, max_value=1e-300, exclude_min=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@given(route=st.sampled_from(sorted(BODIES)), data=st.data())
@settings(max_examples=MUTATIONS, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_a_body_with_one_hostile_value_is_never_a_5xx(route: str, data: Any, client: TestClient) -> None:
    body = BODIES[route]
    path = data.draw(st.sampled_from(_leaves(body)), label="path")
    mutated = _replace(body, path, data.draw(HOSTILE_VALUES, label="value"))
    SENT[f"POST {route} (one value replaced)"] += 1
    resp = client.post(route, content=json.dumps(mutated).encode(), headers={"content-type": "application/json"})
    assert resp.status_code < 500, (route, path, resp.status_code, resp.text[:300])
    assert client.post("/v1/chat/completions", json=NORMAL).status_code == 200


def test_every_operation_was_fuzzed(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the fuzzers in file order: each operation got examples (their counts go to the log)."""
    if not SENT:
        pytest.skip("no fuzzer ran before this report: selected without them, or ahead of them in a random order")
    lines = [f"fuzz: {sum(SENT.values())} requests over {len(SENT)} operations"]
    lines += [f"fuzz: {n:5d}  {op}" for op, n in sorted(SENT.items(), key=lambda item: -item[1]) if n > 3]
    with capsys.disabled():
        sys.stdout.write("\n" + "\n".join(lines) + "\n")
    assert all(n >= 1 for n in SENT.values())
