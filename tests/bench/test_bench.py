from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.bench_policies import _policy_targets, bench_policies, oracle_picks, policy_table
from bench.runner import bench_router


def _m(f1: float, lat: float, steps: float = 1.0) -> dict[str, Any]:
    return {"em": f1 / 2, "f1": f1, "retrieval_steps_mean": steps, "llm_calls_mean": 1.0, "mean_latency_s": lat}


@pytest.mark.unit
def test_table_and_targets() -> None:
    combined = {
        "none": _m(0.1, 1.0, 0),
        "single": _m(0.2, 2.0),
        "multi": _m(0.3, 10.0, 3),
        "dragin": _m(0.31, 5.0, 1),
        "adaptive": _m(0.305, 1.9, 1),
    }
    table = policy_table(combined)
    assert table.splitlines()[0].startswith("| policy | EM | F1 | retrieval steps")
    assert "| multi | 0.150 | 0.300 | 3.00 | 1.00 | 5.00 | 10.00 |" in table
    per_file = {"dev_hotpotqa.jsonl": {"multi": _m(0.3, 10.0, 3), "dragin": _m(0.31, 5.0, 1)}}
    targets = _policy_targets(combined, per_file)
    assert targets["adaptive_vs_best_fixed"]["best_fixed"] == "dragin"
    assert targets["adaptive_vs_best_fixed"]["f1_ratio"] == pytest.approx(0.305 / 0.31, abs=1e-4)
    assert targets["adaptive_vs_best_fixed"]["met"] is True
    assert targets["dragin_vs_multi_dev_hotpotqa.jsonl"]["met"] is True


@pytest.mark.unit
def test_bench_router_writes_json_and_table(tmp_path: Path) -> None:
    from router.features import LEXICAL_NAMES
    from router.training import fit
    from services.config import load_config

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 384 + len(LEXICAL_NAMES)))
    clf, _ = fit(x, [("A", "B", "C")[i % 3] for i in range(60)])
    clf.header["version"] = "bench-test"
    artifact = clf.save(tmp_path / "r.npz")
    config = load_config({"router": {"artifact": str(artifact)}})
    table = bench_router(config, [], tmp_path / "out", repeats=20)
    result = json.loads((tmp_path / "out" / "router.json").read_text())
    assert result["classifier"] == "bench-test" and result["questions"] == 2
    decision = result["decision_ms"]
    assert 0 < decision["p50"] <= decision["p95"] <= decision["max"] and "router decision" in table
    assert f"| router decision (classify + plan) | {decision['p50']} | {decision['p95']} |" in table
    assert sum(result["class_counts"].values()) == 2


@pytest.mark.integration
@pytest.mark.model
def test_bench_policies_on_one_held_out_question(shared_data: Path, tmp_path: Path) -> None:
    from services.config import load_config

    # SmolLM2 alone: the ladder's second model would double the answers without testing anything more here.
    config = load_config({"models": [{"id": "smollm2-135m-instruct"}]})
    table = bench_policies(config, [str(shared_data / "dev_hotpotqa.jsonl")], tmp_path, limit=1, max_tokens=12)
    result = json.loads((tmp_path / "policies.json").read_text())
    assert set(result["policies"]) == {"none", "single", "multi", "dragin", "adaptive", "oracle"}
    assert result["per_file"]["dev_hotpotqa.jsonl"]["multi"]["n"] == 1
    assert "dragin_vs_multi_dev_hotpotqa.jsonl" in result["targets"]
    assert result["policies"]["oracle"]["setups_used"].keys() <= {"none", "single", "multi", "dragin"}
    assert table.count("\n") == 8
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["policy"] for p in preds) == sorted(set(result["policies"]) - {"oracle"})
    assert all(p["plan"]["policy"] for p in preds)


@pytest.mark.unit
def test_bench_router_scores_hops_on_held_out_halves_only(tmp_path: Path) -> None:
    """One- vs multi-hop on each file's test half; a question the classifier was trained on (listed in
    labels.jsonl beside the artifact) is left out even when it sits in a test half."""
    from router.features import LEXICAL_NAMES
    from router.labels import split_rows
    from router.training import fit
    from services.config import load_config

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 384 + len(LEXICAL_NAMES)))
    clf, _ = fit(x, [("A", "B", "C")[i % 3] for i in range(60)])
    artifact = clf.save(tmp_path / "r.npz")
    files = []
    for hops in (1, 2):
        rows = [
            {"id": f"{hops}-{i}", "question": f"Question {i} of {hops} hops?", "answers": ["x"], "hops": hops}
            for i in range(10)
        ]
        path = tmp_path / f"h{hops}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(path))
    _, test = split_rows([json.loads(line) for line in Path(files[0]).read_text().splitlines()], 0, 0.5)
    (tmp_path / "labels.jsonl").write_text(json.dumps({"question": test[0]["question"], "label": "A"}) + "\n")
    config = load_config({"router": {"artifact": str(artifact)}})
    table = bench_router(config, files, tmp_path / "out", repeats=10)
    hops = json.loads((tmp_path / "out" / "router.json").read_text())["hops"]
    assert hops["questions"] == 9 and hops["excluded_seen_in_training"] == 1
    assert hops["files"]["h1.jsonl"]["hops"] == 1 and hops["files"]["h2.jsonl"]["questions"] == 5
    assert 0.0 <= hops["balanced_accuracy"] <= 1.0 and hops["majority_baseline"] == pytest.approx(5 / 9, abs=1e-4)
    assert "balanced accuracy" in table


@pytest.mark.unit
def test_policy_setups_and_targets_over_a_ladder() -> None:
    from bench.bench_policies import policy_setups

    assert policy_setups(["m"], ("none", "adaptive")) == [("none", "m", "none"), ("adaptive", "m", "adaptive")]
    ladder = policy_setups(["s", "q"], ("single", "multi", "dragin", "adaptive"))
    assert ("q/multi", "q", "multi") in ladder and ladder[-1] == ("auto/adaptive", "auto", "adaptive")
    assert len(ladder) == 9
    combined = {
        "s/single": _m(0.2, 2.0),
        "q/single": _m(0.4, 6.0),
        "q/multi": _m(0.45, 20.0, 3),
        "q/dragin": _m(0.46, 9.0, 1),
        "s/adaptive": _m(0.2, 2.0),
        "auto/adaptive": _m(0.45, 7.0, 1),
    }
    per_file = {"dev_hotpotqa.jsonl": {"q/multi": _m(0.45, 20.0, 3), "q/dragin": _m(0.46, 9.0, 1)}}
    targets = _policy_targets(combined, per_file)
    best = targets["adaptive_vs_best_fixed"]
    assert best["run"] == "auto/adaptive" and best["best_fixed"] == "q/dragin"
    assert best["time_ratio"] == pytest.approx(7.0 / 9.0, abs=1e-4) and best["met"] is False
    assert targets["dragin_vs_multi_q/dev_hotpotqa.jsonl"]["met"] is True
    assert "| q/multi |" in policy_table(combined)


def _answer(f1: float, latency: float, model: str = "m") -> dict[str, Any]:
    return {"f1": f1, "em": float(f1 == 1.0), "latency_s": latency, "model": model}


@pytest.mark.unit
def test_oracle_takes_the_fastest_setup_with_each_questions_best_f1() -> None:
    preds = {
        "s/none": [_answer(1.0, 1.0, "s"), _answer(0.0, 1.0, "s"), _answer(0.0, 1.0, "s")],
        "q/single": [_answer(1.0, 5.0, "q"), _answer(0.5, 5.0, "q"), _answer(0.0, 5.0, "q")],
        "q/multi": [_answer(1.0, 20.0, "q"), _answer(1.0, 20.0, "q"), _answer(0.0, 20.0, "q")],
        "auto/adaptive": [_answer(1.0, 1.0), _answer(1.0, 1.0), _answer(1.0, 1.0)],  # never an oracle's pick
    }
    picks = oracle_picks(preds)
    assert picks is not None
    assert [p["setup"] for p in picks] == ["s/none", "q/multi", "s/none"]  # the last: nothing right, so fastest
    assert [p["f1"] for p in picks] == [1.0, 1.0, 0.0]
    assert oracle_picks({"s/none": preds["s/none"], "auto/adaptive": preds["auto/adaptive"]}) is None
    combined = {"q/single": _m(0.5, 5.0), "q/multi": _m(0.67, 20.0), "oracle": _m(0.67, 7.3)}
    targets = _policy_targets(combined, {})
    assert targets["oracle_vs_best_fixed"]["best_fixed"] == "q/multi"
    assert targets["oracle_vs_best_fixed"]["time_ratio"] == pytest.approx(7.3 / 20.0, abs=1e-4)
    assert targets["oracle_vs_best_fixed"]["met"] is True
