"""A work budget for ``response_format``, checked at the edge before any engine sees the schema.

A JSON schema is a program the engines compile: llama.cpp's converter into a grammar, lm-format-enforcer
into a character-level parser whose ``pattern`` strings become state machines (interegular builds each
pattern's DFA in full, and a pattern of 20 characters such as ``(a|b)*a(a|b){18}`` has 2^19 states: a minute
of one core, inside the torch engine's step). So the edge bounds what a schema may ask for:

- its size as JSON, its nesting, and the number of schema nodes once every ``$ref`` is followed (a chain of
  definitions that each refer to the next twice doubles at each link);
- each ``$ref``: local (``#/...``), resolving, and not leading back to itself;
- the keywords: those both CPU engines enforce; any other (``allOf``, ``not``, ``multipleOf``,
  ``uniqueItems``, ``format``, ...) would be dropped silently, so it is refused by name;
- a schema node that says nothing of its value (``{}`` as a property) is refused: the enforcer cannot
  bound "any JSON" and ends the text where it gives up;
- each ``pattern``: a bounded length, valid Python regex syntax, and a state machine built with a deadline in
  a process of its own (killed when the deadline passes), whose states are counted.

Over a bound is a 400 ``response_format_too_complex`` naming the limit; a form the engines cannot honour is a
400 ``unsupported_schema`` naming the keyword or the path.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

from core.nesting import nesting_depth
from services.config import ResponseFormatLimits
from services.errors import InvalidRequestError, ServiceUnavailableError

PARAM = "response_format.json_schema.schema"
# A JSON Schema document, or one schema object inside it: JSON, so any value under its keys.
JsonSchema = dict[str, Any]

# Keywords both CPU engines enforce (the torch engine's lm-format-enforcer, the llama.cpp engine's grammar), or
# that say nothing about the output (annotations): anything else is refused, never silently dropped.
ENFORCED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "pattern",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
    }
)
ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "definitions", "title", "description", "default", "examples"}
)
# What makes a node say something about its value.
_CONSTRAINING = frozenset({"type", "enum", "const", "anyOf", "$ref"})
# Keywords whose value is a schema, a list of them, or a map of name -> schema.
_SCHEMA = ("items", "additionalProperties")
_SCHEMA_LIST = ("anyOf",)
_SCHEMA_MAP = ("properties",)  # and the definitions, which count where a $ref reaches them
_DEFINITIONS = ("$defs", "definitions")


def _too_complex(message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"response_format.json_schema is too complex: {message}", param=PARAM, code="response_format_too_complex"
    )


def _unsupported(message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"response_format.json_schema cannot be enforced: {message}", param=PARAM, code="unsupported_schema"
    )


def _children(node: JsonSchema, path: str) -> Iterator[tuple[Any, str]]:
    for key in _SCHEMA:
        if isinstance(node.get(key), dict):
            yield node[key], f"{path}.{key}"
    for key in _SCHEMA_LIST:
        for i, child in enumerate(node.get(key) or []):
            yield child, f"{path}.{key}[{i}]"
    for key in _SCHEMA_MAP:
        value = node.get(key)
        if isinstance(value, dict):
            for name, child in value.items():
                yield child, f"{path}.{key}.{name}"


def _resolve(root: JsonSchema, ref: str, path: str) -> tuple[JsonSchema, str]:
    """The node a local ``$ref`` (a JSON pointer into this schema) names, and its path."""
    if not ref.startswith("#"):
        raise _unsupported(f"{path}.$ref {ref!r} is not local to the schema (only '#/...' references are followed)")
    node: Any = root
    target = "$"
    for raw in [p for p in ref[1:].split("/") if p]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise _unsupported(f"{path}.$ref {ref!r} does not resolve")
        node = node[part]
        target = f"{target}.{part}"
    if not isinstance(node, dict):
        raise _unsupported(f"{path}.$ref {ref!r} does not name a schema")
    return node, target


def check_shape(schema: JsonSchema, limits: ResponseFormatLimits) -> list[str]:
    """Every bound but the patterns' state machines; returns the schema's patterns (for `check_patterns`)."""
    size = len(json.dumps(schema, ensure_ascii=False).encode("utf-8"))
    if size > limits.max_bytes:
        raise _too_complex(f"it is {size} bytes as JSON; at most {limits.max_bytes} (max_bytes)")
    depth = nesting_depth(schema)
    if depth > limits.max_depth:
        raise _too_complex(f"it nests {depth} levels; at most {limits.max_depth} (max_depth)")
    patterns: list[str] = []
    # Nodes once every $ref is followed, counted per node and memoised; a $ref back into its own chain loops.
    expanded: dict[int, tuple[int, int]] = {}

    def visit(node: Any, path: str, chain: tuple[int, ...], level: int = 1) -> tuple[int, int]:
        """(nodes, levels) of ``node`` once its $refs are followed; ``level``: where it sits (the root is 1)."""
        if not isinstance(node, dict):
            raise _unsupported(f"{path} is not a schema object")
        key = id(node)
        if key in chain:
            raise _unsupported(f"{path} refers back to itself (recursive schemas are not enforced)")
        if key not in expanded:
            expanded[key] = expand(node, path, (*chain, key), level)
        count, height = expanded[key]
        if level + height - 1 > limits.max_depth:
            raise _too_complex(f"it nests over {limits.max_depth} schemas deep once $refs are followed (max_depth)")
        return count, height

    def expand(node: JsonSchema, path: str, chain: tuple[int, ...], level: int) -> tuple[int, int]:
        for keyword in node:
            if keyword not in ENFORCED and keyword not in ANNOTATIONS:
                raise _unsupported(f"{path} uses {keyword!r}, which the engines do not enforce")
        if path != "$" and not (_CONSTRAINING & node.keys()):
            raise _unsupported(f"{path} says nothing of its value: give it a type, an enum, a const or a $ref")
        if "items" in node and not isinstance(node["items"], dict):
            raise _unsupported(f"{path}.items must be one schema (tuple forms are not enforced)")
        pattern = node.get("pattern")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise _unsupported(f"{path}.pattern is not a string")
            if "minLength" in node or "maxLength" in node:
                raise _unsupported(f"{path} has a pattern and a length bound: put the length in the pattern")
            patterns.append(pattern)
        total, height = 1, 1
        parts: list[tuple[Any, str, int]] = []  # (schema, path, levels it adds: a $ref's target is this level)
        ref = node.get("$ref")
        if isinstance(ref, str):
            parts.append((*_resolve(schema, ref, path), 0))
        parts.extend((child, child_path, 1) for child, child_path in _children(node, path))
        for child, child_path, below in parts:
            count, levels = visit(child, child_path, chain, level + below)
            total += count
            height = max(height, levels + below)
            if total > limits.max_nodes:
                raise _too_complex(
                    f"it expands to over {limits.max_nodes} schema nodes once $refs are followed (max_nodes)"
                )
        return total, height

    visit(schema, "$", ())
    # Definitions no $ref reaches are still read by the engines: check their keywords too.
    for key in _DEFINITIONS:
        defs = schema.get(key)
        if isinstance(defs, dict):
            for name, child in defs.items():
                visit(child, f"$.{key}.{name}", ())
    for pattern in patterns:
        if len(pattern) > limits.max_pattern_chars:
            raise _too_complex(
                f"a pattern is {len(pattern)} characters; at most {limits.max_pattern_chars} (max_pattern_chars)"
            )
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _unsupported(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
    return patterns


def dereference(schema: JsonSchema) -> JsonSchema:
    """``schema`` with every ``$ref`` replaced by what it names (a sibling keyword wins over the target's) and its
    definitions dropped: what the engines are given, so neither has to follow references (llama.cpp's converter
    does not follow one inside a definition). Only for a schema `check_shape` passed: its expansion is bounded in
    nodes and depth, and has no cycle."""

    def copy(node: JsonSchema) -> JsonSchema:
        out: JsonSchema = {}
        ref = node.get("$ref")
        if isinstance(ref, str):
            out.update(copy(_resolve(schema, ref, "$")[0]))
        for key, value in node.items():
            if key == "$ref" or key in _DEFINITIONS:
                continue
            if key in _SCHEMA and isinstance(value, dict):
                out[key] = copy(value)
            elif key in _SCHEMA_LIST:
                out[key] = [copy(child) for child in value]
            elif key in _SCHEMA_MAP:
                out[key] = {name: copy(child) for name, child in value.items()}
            else:
                out[key] = value
        return out

    return copy(schema)


# Run as `python -c`: a fresh interpreter per pattern (about 0.1 s of start-up), killed at the deadline. A fork or
# spawn of the server's own process would copy its threads (Ray, the engines) or re-import its main module.
_COUNT_STATES = """
import sys
import interegular
try:
    print(len(interegular.parse_pattern(sys.argv[1]).to_fsm().states))
except Exception:
    print(-1)
"""
# Patterns checked at once (each a process of its own, up to its deadline): a burst of schemas queues here.
_CHECKS = threading.BoundedSemaphore(2)
_QUEUE_S = 10.0


@functools.lru_cache(maxsize=512)
def pattern_states(pattern: str, deadline_s: float) -> int | None:
    """The states of ``pattern``'s state machine as lm-format-enforcer builds it (interegular's DFA), counted in
    a process of its own that is killed at ``deadline_s``: None past the deadline, -1 when interegular cannot
    read the pattern. Remembered per pattern (bounded: the 512 most recent)."""
    if not _CHECKS.acquire(timeout=_QUEUE_S):
        busy = ServiceUnavailableError("too many response_format patterns are being checked; try again")
        busy.retry_after = 1
        raise busy
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _COUNT_STATES, pattern],
            capture_output=True,
            text=True,
            timeout=deadline_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    finally:
        _CHECKS.release()
    try:
        return int(done.stdout.strip())
    except ValueError:
        return -1


async def check_schema(schema: JsonSchema, limits: ResponseFormatLimits) -> JsonSchema:
    """Refuse ``schema`` (InvalidRequestError) unless it is within ``limits`` and every form in it is enforced;
    return it dereferenced (what the engines compile)."""
    patterns = check_shape(schema, limits)
    for written in dict.fromkeys(patterns):
        # The enforcer matches a pattern against the whole string and drops a leading ^ and a trailing $ itself.
        pattern = written.removeprefix("^").removesuffix("$")
        states = await asyncio.to_thread(pattern_states, pattern, limits.pattern_deadline_s)
        if states is None:
            raise _too_complex(
                f"pattern {pattern!r} did not compile within {limits.pattern_deadline_s} s (pattern_deadline_s)"
            )
        if states < 0:
            raise _unsupported(f"pattern {pattern!r} uses regex syntax the engines do not enforce")
        if states > limits.max_pattern_states:
            raise _too_complex(
                f"pattern {pattern!r} compiles to {states} states; at most {limits.max_pattern_states} "
                "(max_pattern_states)"
            )
    return dereference(schema)
