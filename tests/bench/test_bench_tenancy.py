from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_tenancy import bench_tenancy

pytestmark = pytest.mark.unit


def test_bench_tenancy_compares_the_two_designs_on_the_same_queries(tmp_path: Path) -> None:
    table = bench_tenancy(tmp_path, sizes=(2000,), tenants=4, queries=20)
    result = json.loads((tmp_path / "tenancy.json").read_text())
    [row] = result["rows"]
    # both designs return the same chunks for every query, and the ratios are of the medians shown
    assert row["same_results"] == row["queries"] == 20
    ms = row["ms"]
    assert row["selector_vs_per_namespace"] == pytest.approx(
        ms["selector"]["p50"] / ms["per-namespace"]["p50"], rel=0.01
    )
    assert row["readable_chunks_per_query"] == 1000 + 250
    assert "| 2,000 |" in table and (tmp_path / "tenancy.md").read_text() == table
