from __future__ import annotations

import pytest

from core.nesting import nesting_depth

pytestmark = pytest.mark.unit


def test_nesting_depth_counts_objects_and_arrays_without_recursing() -> None:
    assert [nesting_depth(v) for v in (3, "x", {}, [1], {"a": []}, [{"b": {"c": 1}}])] == [0, 0, 1, 1, 2, 3]
    deep: object = 1
    for _ in range(50_000):  # far past Python's recursion limit
        deep = [deep]
    assert nesting_depth(deep) == 50_000
