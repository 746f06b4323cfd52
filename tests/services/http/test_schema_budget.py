"""The work budget on a ``response_format`` schema (services/http/schema_budget.py): each bound and each form
the engines cannot honour is refused by name, the forms they do honour pass (and reach the engines with their
references followed), and a pattern whose state machine explodes is stopped at its deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.config import ResponseFormatLimits
from services.errors import InvalidRequestError
from services.http.schema_budget import check_schema, check_shape, dereference, pattern_states
from tests.utils.factories import SCHEMA_FORMS

pytestmark = pytest.mark.unit

LIMITS = ResponseFormatLimits()


def _fan(width: int, depth: int) -> dict[str, Any]:
    """Definitions that each refer to the next ``width`` times: 1 KB of schema, width**depth nodes expanded."""
    defs: dict[str, Any] = {
        f"d{i}": {"type": "object", "properties": {f"p{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(width)}}
        for i in range(depth)
    }
    defs[f"d{depth}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def _refused(schema: dict[str, Any], code: str, words: str, limits: ResponseFormatLimits = LIMITS) -> None:
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(check_schema(schema, limits))
    assert info.value.code == code and words in info.value.message, info.value.message
    assert info.value.param == "response_format.json_schema.schema"


@pytest.mark.parametrize("name", sorted(SCHEMA_FORMS))
def test_the_forms_the_engines_honour_pass(name: str) -> None:
    schema = SCHEMA_FORMS[name][0]
    out = asyncio.run(check_schema(schema, LIMITS))
    assert "$ref" not in str(out) and "$defs" not in out


def test_a_reference_fan_out_is_over_the_node_budget() -> None:
    schema = _fan(5, 6)  # 5**6 = 15,625 nodes from a schema of about 1 KB
    assert len(str(schema)) < 1500
    _refused(schema, "response_format_too_complex", "max_nodes")
    assert check_shape(_fan(2, 5), LIMITS) == []  # 63 nodes: fine


def test_size_and_depth_bounds() -> None:
    big = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(800)}}
    _refused(big, "response_format_too_complex", "max_bytes")
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        deep = {"type": "object", "properties": {"a": deep}}
    asyncio.run(check_schema(deep, ResponseFormatLimits(max_depth=64)))  # within a looser bound
    _refused(deep, "response_format_too_complex", "max_depth")


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"$defs": {"a": {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}}, "$ref": "#/$defs/a"},
         "refers back to itself"),
        ({"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}, "does not resolve"),
        ({"type": "object", "properties": {"x": {"$ref": "https://example.org/s.json"}}}, "not local"),
        ({"type": "object", "properties": {"x": {}}}, "says nothing of its value"),
        ({"type": "object", "properties": {"x": {"description": "anything"}}}, "says nothing of its value"),
        ({"type": "object", "allOf": [{"type": "object"}]}, "'allOf'"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "'uniqueItems'"),
        ({"type": "number", "multipleOf": 3}, "'multipleOf'"),
        ({"type": "string", "format": "email"}, "'format'"),
        ({"type": "array", "items": [{"type": "string"}]}, "tuple forms"),
        ({"type": "string", "pattern": "[a-z]+", "maxLength": 4}, "pattern and a length bound"),
        ({"type": "string", "pattern": "("}, "not a valid regular expression"),
        ({"type": "string", "pattern": "(a)\\1"}, "regex syntax the engines do not enforce"),
    ],
)  # fmt: skip
def test_forms_the_engines_cannot_honour_are_refused_by_name(schema: dict[str, Any], words: str) -> None:
    _refused(schema, "unsupported_schema", words)


def test_a_pattern_whose_state_machine_explodes_is_stopped_at_its_deadline() -> None:
    # 20 characters, 2**19 states: a minute of one core in the enforcer, stopped here at the deadline.
    schema = {"type": "string", "pattern": "(a|b)*a(a|b){18}"}
    _refused(schema, "response_format_too_complex", "pattern_deadline_s", ResponseFormatLimits(pattern_deadline_s=0.5))
    # Under the deadline but over the states bound (2**11 states).
    _refused({"type": "string", "pattern": "(a|b)*a(a|b){10}"}, "response_format_too_complex", "max_pattern_states")
    long = {"type": "string", "pattern": "a" * 300}
    _refused(long, "response_format_too_complex", "max_pattern_chars")


def test_the_pattern_check_is_remembered_and_bounded() -> None:
    pattern_states.cache_clear()
    assert pattern_states("[A-Z]{3}", 5.0) == 4
    assert pattern_states("[A-Z]{3}", 5.0) == 4
    info = pattern_states.cache_info()
    assert info.hits == 1 and info.maxsize == 512


def test_dereference_inlines_targets_and_keeps_sibling_keywords() -> None:
    schema = {
        "$defs": {"name": {"type": "string", "description": "a name"}},
        "type": "object",
        "properties": {"first": {"$ref": "#/$defs/name", "description": "the first name"}},
    }
    out = dereference(schema)
    assert out == {
        "type": "object",
        "properties": {"first": {"type": "string", "description": "the first name"}},
    }
