"""How deep a parsed JSON value nests: the edge bounds request bodies with it, retrieval a document's
metadata. The walk is iterative, so a deep value cannot reach the recursion limit."""

from __future__ import annotations

from typing import Any


def nesting_depth(value: Any) -> int:
    """Levels of objects and arrays: 0 for a scalar, 1 for ``{}`` or ``[1]``, 2 for ``{"a": []}``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _is_lone_surrogate(ch: str) -> bool:
    return "\ud800" <= ch <= "\udfff"


def lone_surrogate_at(value: Any) -> str | None:
    """Where a parsed JSON value holds text that is not valid Unicode (a lone surrogate, which a JSON escape
    such as ``"\\ud800"`` can write and no tokenizer or embedder takes): the path of the first such string,
    key or value (``messages[0].content``; ``$`` for the value itself), or None. Iterative, like the depth."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if any(_is_lone_surrogate(ch) for ch in node):
                return path or "$"
        elif isinstance(node, dict):
            for key, child in reversed(list(node.items())):
                name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")  # printable in an error
                here = f"{path}.{name}" if path else name
                if any(_is_lone_surrogate(ch) for ch in key):
                    return here
                stack.append((child, here))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(node))))
    return None


def refuse_json_constant(name: str) -> Any:
    """``parse_constant`` for Python's JSON parser: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise ValueError(f"{name} is not a JSON value")


def not_unicode(where: str) -> str:
    """The one wording, for every route and format, of text that is not valid Unicode at ``where``."""
    return f"{where} holds text that is not valid Unicode (a lone surrogate such as \\ud800)"
