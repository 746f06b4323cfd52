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
