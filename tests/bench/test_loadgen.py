"""`python -m bench.loadgen` (the SLA and chaos benchmarks' client): each of its three load shapes against the
gateway app in this process (a scripted engine behind it), every request streamed and accounted for."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import loadgen
from services.http.app import create_app
from tests.fakes import ScriptedEngine, scripted_config, scripted_service

pytestmark = pytest.mark.unit  # the scripted engine and the hashing embedder


@pytest.mark.parametrize("shape", ["burst", "concurrency", "rate"])
def test_each_load_shape_streams_and_accounts_for_every_request(
    shape: str, hashing_embedder: Any, tmp_path: Path
) -> None:
    svc = scripted_service(
        scripted_config(tmp_path / "index"), hashing_embedder, ScriptedEngine("Zorblat is the capital.")
    )
    reqs = tmp_path / "reqs.jsonl"
    reqs.write_text("".join(json.dumps({"question": f"Question {n}?", "tier": "gold"}) + "\n" for n in range(4)))
    args = argparse.Namespace(
        url="http://gateway",
        requests=str(reqs),
        burst=shape == "burst",
        concurrency=2 if shape == "concurrency" else None,
        rate=50.0 if shape == "rate" else None,
        duration=5.0,
        drain=10.0,
        timeout=30.0,
        max_tokens=8,
        seed=0,
    )
    out = asyncio.run(loadgen.run(args, transport=httpx.ASGITransport(app=create_app(svc))))
    results = sorted(out["results"], key=lambda r: r["i"])
    assert [r["i"] for r in results] == [0, 1, 2, 3]
    for r in results:
        assert r["status"] == 200 and r["answer"] == "Zorblat is the capital.", r
        assert r["tier"] == "gold" and r["ttft_s"] <= r["latency_s"] and r["policy"]


def test_the_command_needs_a_load_shape(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        loadgen.main(["--url", "http://x", "--requests", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "o")])
