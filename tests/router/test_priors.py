"""Latency priors as an artifact: built from `bench policies` answers (fixed setups only), looked up per
model and policy with the slowest measured plan for what was not measured, and refused when malformed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.errors import RouterArtifactError
from router.estimates import Estimator, PlanKey
from router.priors import FALLBACK, LatencyPriors, build_priors

pytestmark = pytest.mark.unit


def row(setup: str, policy: str, model: str, latency: float, decode: float) -> dict[str, Any]:
    return {
        "setup": setup,
        "policy": policy,
        "model": model,
        "latency_s": latency,
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "timings": {"decode_s": decode, "ttft_s": 0.01},
    }


ROWS = (
    [row("s/none", "none", "s", 0.1 * (i + 1), 0.05 * (i + 1)) for i in range(20)]  # 0.1 .. 2.0 s, half decode
    + [row("s/single", "single", "s", 3.0, 1.0)]
    + [row("auto/adaptive", "adaptive", "s", 99.0, 99.0), row("oracle", "none", "s", 99.0, 99.0)]
)


def test_built_from_fixed_setups_only() -> None:
    content = build_priors(ROWS, source="a run")
    priors = content["priors"]
    assert set(priors) == {"s"} and set(priors["s"]) == {"none", "single"}  # routed rows are left out
    none = priors["s"]["none"]
    assert none["p50_s"] == pytest.approx(1.05) and none["latency_s"] == pytest.approx(1.905)
    # TTFT is the latency less the final decode (the generation's own ttft_s, 0.01, is not the client's).
    assert none["n"] == 20 and none["ttft_s"] == pytest.approx(1.905 / 2) and none["prompt_tokens"] == 100
    assert priors["s"]["single"]["latency_s"] == 3.0  # one answer: its own latency


def test_what_was_not_measured_takes_the_slowest_measured_plan() -> None:
    priors = LatencyPriors.from_content(build_priors(ROWS))
    assert priors.get("s", "none")[1] == "prior"
    slow, source = priors.get("s", "multi")
    assert source == "prior:slowest" and slow["latency_s"] == 3.0
    assert priors.get("other-model", "none") == (slow, "prior:slowest")  # any model's slowest
    assert LatencyPriors({}).get("s", "none") == (FALLBACK, "prior:fallback")


def test_the_estimator_uses_them_until_a_plan_is_observed() -> None:
    est = Estimator(min_observations=3, priors=LatencyPriors.from_content(build_priors(ROWS)))
    key = PlanKey("single", "s", False, False)
    assert (est.predict(key, "B").latency_s, est.predict(key, "B").source) == (3.0, "prior")
    for _ in range(3):
        est.observe(key, "B", 0.5, 0.1, 100, 10)
    assert est.predict(key, "B").source == "class" and est.predict(key, "B").latency_s < 1.0


def test_save_load_and_bad_artifacts(tmp_path: Path) -> None:
    path = LatencyPriors.from_content(build_priors(ROWS, source="x")).save(tmp_path / "p.json")
    assert LatencyPriors.load(path).priors["s"]["single"]["latency_s"] == 3.0
    with pytest.raises(RouterArtifactError, match="does not exist"):
        LatencyPriors.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(RouterArtifactError, match="unreadable"):
        LatencyPriors.load(bad)
    bad.write_text(json.dumps({"format": 1, "priors": {"s": {"none": {"latency_s": -1}}}}), encoding="utf-8")
    with pytest.raises(RouterArtifactError, match="malformed"):
        LatencyPriors.load(bad)


def test_the_router_says_which_priors_it_plans_with(tmp_path: Path) -> None:
    from services.deployments.router import RouterService

    key = PlanKey("single", "smollm2-135m-instruct", False, False)
    shipped = RouterService({"sla": {"enabled": True}})
    assert shipped.ready()["sla"]["latency_priors_error"] is None
    assert shipped.controller is not None and shipped.controller.estimator.predict(key, "B").source == "prior"
    missing = RouterService({"sla": {"enabled": True, "latency_priors": str(tmp_path / "none.json")}})
    assert "does not exist" in missing.ready()["sla"]["latency_priors_error"]
    assert missing.controller is not None
    assert missing.controller.estimator.predict(key, "B").source == "prior:fallback"


def test_build_priors_on_the_command_line(tmp_path: Path) -> None:
    from services.cli import main

    predictions = tmp_path / "predictions.jsonl"
    lines = [json.dumps({**r, "question": "q?", "answers": ["a"]}) for r in ROWS]
    predictions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "priors.json"
    assert main(["build-priors", "--predictions", str(predictions), "--out", str(out)]) == 0
    assert LatencyPriors.load(out).priors == build_priors(ROWS)["priors"]
    routed = tmp_path / "routed.jsonl"
    routed.write_text(lines[-1] + "\n", encoding="utf-8")  # only the oracle's row: nothing to build from
    assert main(["build-priors", "--predictions", str(routed), "--out", str(tmp_path / "none.json")]) == 2
    assert not (tmp_path / "none.json").exists()
