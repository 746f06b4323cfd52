"""The model x policy x class quality table: labels with a ladder, the table from runs, the artifact's
checks, and the router's choice (the cheapest pair within the margin of the best) with and without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.classifier import ComplexityClassifier
from router.errors import RouterArtifactError
from router.quality import QualityTable, build_table, ladder_labels
from router.routing import ConfigRouter
from services.config import load_config

pytestmark = pytest.mark.unit

SMALL, BIG = "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"


def run(qid: str, model: str, policy: str, f1: float, latency: float, hops: int = 1) -> dict[str, Any]:
    return {
        "file": "f.jsonl",
        "id": qid,
        "question": f"question {qid}?",
        "hops": hops,
        "model": model,
        "policy": policy,
        "prediction": "x",
        "em": 1.0 if f1 == 1.0 else 0.0,
        "f1": f1,
        "latency_s": latency,
        "prompt_tokens": 100,
        "completion_tokens": 4,
        "llm_calls": 1,
    }


def grid(qid: str, f1: dict[tuple[str, str], float], hops: int = 1) -> list[dict[str, Any]]:
    lat = {(SMALL, "none"): 0.5, (SMALL, "single"): 1.0, (SMALL, "multi"): 4.0}
    lat |= {(BIG, "none"): 1.0, (BIG, "single"): 2.0, (BIG, "multi"): 8.0}
    return [run(qid, m, p, f1.get((m, p), 0.0), lat[(m, p)], hops) for (m, p) in lat]


RUNS = (
    grid("a", {(SMALL, "none"): 1.0, (BIG, "none"): 1.0, (BIG, "single"): 1.0})  # A, SmolLM2 suffices
    + grid("b", {(BIG, "single"): 1.0, (BIG, "multi"): 0.6})  # B, only the big model
    + grid("c", {(BIG, "multi"): 1.0}, hops=2)  # C
    + grid("d", {}, hops=2)  # nothing answers: bias, multi-hop → C
    + grid("e", {(SMALL, "single"): 0.2})  # nothing correct, single-hop → B
)


def test_ladder_labels_take_the_simplest_policy_and_cheapest_model() -> None:
    labels = {r["id"]: r for r in ladder_labels(RUNS, {SMALL: 1.0, BIG: 3.0})}
    assert (labels["a"]["label"], labels["a"]["model"]) == ("A", SMALL)
    assert (labels["b"]["label"], labels["b"]["model"]) == ("B", BIG)
    assert (labels["c"]["label"], labels["c"]["model"]) == ("C", BIG)
    assert (labels["d"]["label"], labels["d"]["source"]) == ("C", "inductive bias")
    assert (labels["e"]["label"], labels["e"]["source"]) == ("B", "inductive bias")


def test_table_cells_are_mean_f1_by_class_with_costs() -> None:
    content = build_table(RUNS)
    assert content["models"] == [SMALL, BIG]  # cheapest first
    assert content["label_counts"] == {"A": 1, "B": 2, "C": 2}
    t = content["table"]
    assert t[SMALL]["none"]["A"] == 1.0 and t[SMALL]["none"]["B"] == 0.0
    assert t[BIG]["single"]["B"] == 0.5  # b: 1.0, e: 0.0
    assert t[BIG]["multi"]["C"] == 0.5  # c: 1.0, d: 0.0
    assert content["cost"][BIG]["multi"]["latency_s"] == 8.0 and content["cost"][BIG]["multi"]["n"] == 5
    assert content["cell_counts"][BIG]["single"] == {"A": 1, "B": 2, "C": 2}


def test_choose_is_the_cheapest_within_the_margin() -> None:
    q = QualityTable.from_content(build_table(RUNS))
    chosen, pairs = q.choose([SMALL, BIG], ["none", "single", "multi"], {"A": 1.0, "B": 0.0, "C": 0.0}, 0.02)
    assert (chosen.model, chosen.policy) == (SMALL, "none")  # quality 1.0 and the fastest
    assert len(pairs) == 6 and all(c.why_not for c in pairs if c is not chosen)
    chosen, pairs = q.choose([SMALL, BIG], ["none", "single", "multi"], {"A": 0.0, "B": 1.0, "C": 0.0}, 0.02)
    assert (chosen.model, chosen.policy) == (BIG, "single")
    slower = [c for c in pairs if (c.model, c.policy) == (BIG, "multi")][0]
    assert "below 98% of the best" in (slower.why_not or "")
    # A wide margin trades quality for speed: 15% of the best (0.5) admits the small model's single (0.1).
    chosen, _ = q.choose([SMALL, BIG], ["none", "single", "multi"], {"A": 0.0, "B": 1.0, "C": 0.0}, 0.85)
    assert (chosen.model, chosen.policy) == (SMALL, "single")
    # The margin is relative: where every pair expects little (0.05 at best), 3% still means 3% of the best,
    # not the fastest pair expecting nothing.
    chosen, _ = q.choose([SMALL, BIG], ["none", "single", "multi"], {"A": 0.0, "B": 0.1, "C": 0.0}, 0.03)
    assert (chosen.model, chosen.policy) == (BIG, "single")
    with pytest.raises(ValueError, match="none of these"):
        q.choose(["other"], ["none"], {"A": 1.0}, 0.0)


def test_choose_by_gain_per_second_makes_the_slower_pair_earn_its_time() -> None:
    """Class B: BIG single expects 0.5 in 2 s, BIG multi 0.3 in 8 s, SMALL none 0 in 0.5 s, SMALL single 0.1."""
    q = QualityTable.from_content(build_table(RUNS))
    pairs = (["none", "single", "multi"], {"A": 0.0, "B": 1.0, "C": 0.0})
    chosen, others = q.choose([SMALL, BIG], *pairs, 0.0, per_second=0.01)
    assert (chosen.model, chosen.policy) == (BIG, "single")
    multi = next(c for c in others if (c.model, c.policy) == (BIG, "multi"))
    assert "(8.00 s) and no better than" in (multi.why_not or "")
    # Class C: multi expects 0.5 in 8 s against single's 0 in 2 s: 0.083 F1 a second. Worth it at 0.05 a second,
    # not at 0.1; and a price of 0 is the best quality whatever it takes.
    probs = {"A": 0.0, "B": 0.0, "C": 1.0}
    table = q.table
    gain = (table[BIG]["multi"]["C"] - table[BIG]["single"]["C"]) / (q.latency(BIG, "multi") - q.latency(BIG, "single"))
    assert 0.05 < gain < 0.1
    assert q.choose([BIG], ["single", "multi"], probs, 0.0, per_second=0.05)[0].policy == "multi"
    cheap, others = q.choose([BIG], ["single", "multi"], probs, 0.0, per_second=0.1)
    assert (cheap.model, cheap.policy) == (BIG, "single")
    lost = next(c for c in others if (c.model, c.policy) == (BIG, "multi"))
    assert f"{gain:.4f} a second, below 0.1" in (lost.why_not or "")
    assert q.choose([SMALL, BIG], ["single", "multi"], probs, 0.0, per_second=0.0)[0].policy == "multi"
    # A huge price buys the fastest pair, and a faster pair that lost says what its saving was worth.
    fastest, others = q.choose([SMALL, BIG], *pairs, 0.0, per_second=10.0)
    assert fastest.latency_s == min(c.latency_s for c in [fastest, *others])
    chosen, others = q.choose([SMALL, BIG], *pairs, 0.0, per_second=0.01)
    faster = next(c for c in others if (c.model, c.policy) == (SMALL, "none"))
    assert "more than its" in (faster.why_not or "") and "saved is worth at 0.01 a second" in (faster.why_not or "")


def test_artifact_round_trip_and_refusals(tmp_path: Path) -> None:
    path = QualityTable.from_content(build_table(RUNS)).save(tmp_path / "q.json")
    assert QualityTable.load(path).table == build_table(RUNS)["table"]
    with pytest.raises(RouterArtifactError, match="does not exist; build one"):
        QualityTable.load(tmp_path / "missing.json")
    bad = json.loads(path.read_text())
    bad["table"][SMALL]["none"]["A"] = 1.5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(RouterArtifactError, match="malformed"):
        QualityTable.load(tmp_path / "bad.json")
    (tmp_path / "fmt.json").write_text(json.dumps({**bad, "format": 99}))
    with pytest.raises(RouterArtifactError, match="another format"):
        QualityTable.load(tmp_path / "fmt.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(RouterArtifactError, match="unreadable"):
        QualityTable.load(tmp_path / "junk.json")


def classifier_always(label: str) -> ComplexityClassifier:
    """A real artifact-shaped classifier whose intercepts make one class win for any input."""
    from router.features import LEXICAL_NAMES

    n = 384 + len(LEXICAL_NAMES)
    intercept = np.array([5.0 if c == label else 0.0 for c in "ABC"])
    return ComplexityClassifier(np.zeros(n), np.ones(n), np.zeros((3, n)), intercept, header={"version": "fixed"})


def ladder_router(label: str, **router_cfg: Any) -> ConfigRouter:
    config = load_config({"router": router_cfg})
    assert [m.id for m in config.models] == [SMALL, BIG]
    return ConfigRouter(config, classifier_always(label), quality=QualityTable.from_content(build_table(RUNS)))


def test_auto_and_adaptive_route_by_the_table() -> None:
    emb = np.zeros(384, dtype=np.float32)
    r = ladder_router("B")
    assert r.needs_embedding("adaptive", "auto") and r.needs_embedding("single", "auto")
    assert not r.needs_embedding("single", SMALL)
    d = r.route("q", model="auto", policy="adaptive", embedding=emb)
    assert (d.plan.model, d.plan.policy, d.plan.complexity.policy) == (BIG, "adaptive", "single")
    assert d.plan.routing is not None and d.plan.routing["chosen"]["model"] == BIG
    assert len(d.plan.routing["candidates"]) == 6 and "best of 6 candidates net of 0.01 a second" in d.reason
    d = ladder_router("B", quality_per_second=None).route("q", model="auto", policy="adaptive", embedding=emb)
    assert "cheapest of 6 candidates expecting at least 97%" in d.reason and d.plan.routing["per_second"] is None
    # Class A: SmolLM2 without retrieval is as good, and cheaper.
    d = ladder_router("A").route("q", model="auto", policy="adaptive", embedding=emb)
    assert (d.plan.model, d.plan.complexity.policy) == (SMALL, "none")
    # A pinned policy still gets its model chosen; a pinned model still gets its policy chosen.
    d = ladder_router("B").route("q", model="auto", policy="none", embedding=emb)
    assert (d.plan.model, d.plan.policy) == (SMALL, "none")
    assert {c["policy"] for c in d.plan.routing["candidates"]} == {"none"}
    d = ladder_router("B").route("q", model=SMALL, policy="adaptive", embedding=emb)
    assert d.plan.model == SMALL and {c["model"] for c in d.plan.routing["candidates"]} == {SMALL}
    assert "requested" in d.reason


def test_without_a_table_auto_is_the_first_model(tmp_path: Path) -> None:
    config = load_config({"router": {"quality_table": str(tmp_path / "none.json")}})
    r = ConfigRouter(config, classifier_always("B"))
    assert r.quality is None and "does not exist" in (r.quality_error or "")
    d = r.route("q", model="auto", policy="adaptive", embedding=np.zeros(384, dtype=np.float32))
    assert (d.plan.model, d.plan.complexity.policy) == (SMALL, "single")
    assert d.plan.routing is None and "the first configured" in d.reason


def test_no_embedding_uses_the_class_prior() -> None:
    r = ConfigRouter(load_config({}), None, quality=QualityTable.from_content(build_table(RUNS)))
    r.classifier, r.classifier_error = None, "off for this test"
    d = r.route("q", model="auto", policy="single")
    assert d.plan.routing is not None and d.plan.routing["probabilities"] == {"A": 0.2, "B": 0.4, "C": 0.4}


def test_the_table_uses_only_questions_every_pair_answered() -> None:
    """A cascade's later pairs run only where earlier ones failed: its questions label, but stay out of
    the table's cells and costs."""
    full = [run("1", m, p, 1.0, 1.0) for m in (SMALL, BIG) for p in ("none", "single", "multi")]
    cascade = [
        {**run("2", SMALL, "none", 0.0, 9.0), "mode": "cascade"},
        {**run("2", BIG, "none", 0.0, 9.0), "mode": "cascade"},
        {**run("2", SMALL, "single", 0.0, 9.0), "mode": "cascade"},
    ]
    content = build_table(full + cascade)
    assert content["questions"] == 2 and content["questions_in_table"] == 1
    assert content["cost"][SMALL]["none"]["latency_s"] == 1.0 and content["cost"][SMALL]["none"]["n"] == 1
    assert content["table"][SMALL]["single"]["A"] == 1.0


def test_a_full_run_of_some_policies_adds_to_their_cells_only() -> None:
    """`collect-ladder --policies none,single` (full mode): question 3's none and single runs join those
    cells and costs; multi's rest on the one question that ran it, paired with the reference policy. A
    policy only one model ran on a question stays out (the models are compared on the same questions)."""
    full = [run("1", m, p, 1.0, 1.0) for m in (SMALL, BIG) for p in ("none", "single", "multi")]
    partial = [{**run("3", m, p, 0.0, 3.0), "mode": "full"} for m in (SMALL, BIG) for p in ("none", "single")]
    lone = [{**run("4", SMALL, "none", 0.0, 9.0), "mode": "full"}]
    content = build_table(full + partial + lone)
    assert content["questions_per_policy"] == {"multi": 1, "none": 2, "single": 2}
    assert content["cost"][SMALL]["none"] == {"latency_s": 2.0, "tokens": 104.0, "n": 2}
    assert content["cost"][BIG]["multi"]["n"] == 1
    assert content["questions"] == 3  # question 4 is still labelled
    assert content["paired"] == {"multi": {"with": "single", "questions": 1}}


def test_a_policy_measured_on_easier_questions_is_levelled_by_its_paired_difference() -> None:
    """`multi` ran only on question 1, where every policy scores 1.0; on question 2, which `none` and
    `single` both ran, they score 0.0. Raw means would give multi 1.0 on every class; paired with the
    nearest policy measured on both (single), multi is single's level plus its difference on the shared
    question (0.0), and its latency is single's mean plus its paired extra time (+3 s)."""
    easy = [
        run("1", m, p, 1.0, 4.0 if p == "multi" else 1.0) for m in (SMALL, BIG) for p in ("none", "single", "multi")
    ]
    hard = [run("2", m, p, 0.0, 1.0) for m in (SMALL, BIG) for p in ("none", "single")]
    # Question 2 is labelled B by the inductive bias (nothing correct, single-hop); question 1 is A.
    content = build_table(easy + hard)
    assert content["questions_per_policy"] == {"multi": 1, "none": 2, "single": 2}
    for m in (SMALL, BIG):
        assert content["table"][m]["single"] == {"A": 1.0, "B": 0.0, "C": 0.5}
        # class A: single's A cell (1.0) + paired diff 0; class B has no paired question: overall diff 0.
        assert content["table"][m]["multi"] == {"A": 1.0, "B": 0.0, "C": 0.5}
        assert content["cost"][m]["multi"] == {"latency_s": 4.0, "tokens": 104.0, "n": 1}
    # The raw mean over multi's own question would have called it perfect on every class.
    assert content["table"][BIG]["multi"]["B"] < 1.0
