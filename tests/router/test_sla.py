"""SLA policies, header overrides, hot reload, estimates and the controller's decision rule."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.budgets.memory_ledger import MemoryLedger
from router.controller import SlaController
from router.errors import (
    BudgetExhaustedError,
    OverloadedError,
    PlanUnavailableError,
    SlaHeaderError,
    SlaOverrideError,
    SlaPolicyError,
)
from router.estimates import Estimator, LoadModel, PlanKey
from router.plan import Complexity, Outcome
from router.quality import measured_quality
from router.sla import PolicyStore, parse_policy, resolve
from services.config import load_config
from tests.router.sla_tables import MODEL, POLICY, PRIORS, QUALITY

pytestmark = pytest.mark.unit


def _errors(data: dict[str, Any]) -> str:
    with pytest.raises(SlaPolicyError) as info:
        parse_policy(data, models=[MODEL])
    return str(info.value)


def test_policy_validation_names_the_failing_path() -> None:
    assert "tiers.fast.latency_ms" in _errors({"tiers": {"fast": {"priority": 1, "latency_ms": -5}}})
    assert "default_tier 'standard' is not a tier" in _errors({"tiers": {"fast": {"priority": 1, "latency_ms": 5}}})
    bad_tenant = {**POLICY, "tenants": {"x": {"api_keys": ["a"], "tier": "gold"}}}
    assert "tenants.x: tier 'gold' does not exist" in _errors(bad_tenant)
    dup = {**POLICY, "tenants": {"x": {"api_keys": ["a"], "tier": "batch"}, "y": {"api_keys": ["a"], "tier": "batch"}}}
    assert "tenants.y: an API key is also tenant 'x'" in _errors(dup)
    assert "ttft_ms must not exceed latency_ms" in _errors(
        {"default_tier": "t", "tiers": {"t": {"priority": 1, "latency_ms": 100, "ttft_ms": 200}}}
    )
    assert "tiers.t.colour" in _errors(
        {"default_tier": "t", "tiers": {"t": {"priority": 1, "latency_ms": 9, "colour": 1}}}
    )
    assert "budget" in _errors({**POLICY, "tenants": {"x": {"api_keys": ["a"], "tier": "batch", "budget": {}}}})
    assert "needs a `prices` table" in _errors(
        {**POLICY, "tenants": {"x": {"api_keys": ["a"], "tier": "batch", "budget": {"cost": 5}}}}
    )
    assert "unknown model(s) ['gpt-9']" in _errors({**POLICY, "prices": {"gpt-9": {"prompt_per_1m": 1}}})
    assert "quality.magic" in _errors({**POLICY, "quality": {"magic": {"A": 0.5}}})
    assert "mapping" in _errors([1, 2])  # type: ignore[arg-type]


def test_tenant_keys_may_be_stored_hashed() -> None:
    from router.sla import hash_api_key

    hashed = hash_api_key("s3cret")
    assert hashed.startswith("sha256:") and len(hashed) == 7 + 64
    policy = parse_policy({**POLICY, "tenants": {"h": {"api_keys": [hashed], "tier": "batch"}}})
    assert policy.tenant_for_key("s3cret") == "h"
    assert policy.tenant_for_key(hashed) is None  # the digest itself is not a key
    assert "64 lowercase hex" in _errors({**POLICY, "tenants": {"h": {"api_keys": ["sha256:abc"], "tier": "batch"}}})
    clash = {"x": {"api_keys": ["s3cret"], "tier": "batch"}, "y": {"api_keys": [hashed], "tier": "batch"}}
    assert "tenants.y: an API key is also tenant 'x'" in _errors({**POLICY, "tenants": clash})


def test_overrides_only_tighten() -> None:
    policy = parse_policy(POLICY)
    slo = resolve(policy, "acme", {"X-SLO-Latency-Ms": "4000", "x-slo-ttft-ms": "1500", "x-budget-tokens": "900"})
    assert (slo.tier, slo.latency_ms, slo.ttft_ms, slo.max_tokens) == ("interactive", 4000, 1500, 900)
    with pytest.raises(SlaOverrideError, match="loosen"):
        resolve(policy, "acme", {"x-slo-latency-ms": "6001"})
    with pytest.raises(SlaOverrideError, match="loosen"):
        resolve(policy, "acme", {"x-slo-ttft-ms": "3001"})
    with pytest.raises(SlaOverrideError, match="loosen"):
        resolve(policy, "tiny", {"x-budget-tokens": "5001"})
    # A lower tier is always allowed; a higher one is not.
    assert resolve(policy, "acme", {"x-sla-tier": "batch"}).tier == "batch"
    with pytest.raises(SlaOverrideError, match="above what"):
        resolve(policy, "tiny", {"x-sla-tier": "interactive"})
    with pytest.raises(SlaOverrideError):
        resolve(policy, None, {"x-sla-tier": "interactive"})  # anonymous: the default tier, standard
    with pytest.raises(SlaHeaderError, match="not a tier"):
        resolve(policy, "acme", {"x-sla-tier": "gold"})
    for bad in ("soon", "-4", "0", "1.5"):
        with pytest.raises(SlaHeaderError, match="positive integer"):
            resolve(policy, "acme", {"x-slo-latency-ms": bad})
    # A tightened latency also caps the TTFT target.
    assert resolve(policy, "acme", {"x-slo-latency-ms": "2000"}).ttft_ms == 2000


def test_reload_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "sla.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    store = PolicyStore(path, reload_interval_s=0.0, models=[MODEL])
    assert store.policy.tiers["interactive"].latency_ms == 6000 and store.version == 1

    def rewrite(text: str) -> None:
        path.write_text(text)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime even on coarse clocks

    changed = {**POLICY, "tiers": {**POLICY["tiers"], "interactive": {"priority": 3, "latency_ms": 5000}}}
    rewrite(yaml.safe_dump(changed))
    assert store.policy.tiers["interactive"].latency_ms == 5000 and store.version == 2
    rewrite("tiers: {interactive: {priority: 3, latency_ms: soon}}\n")
    assert store.policy.tiers["interactive"].latency_ms == 5000  # the bad file is rejected
    assert store.version == 2 and "latency_ms" in (store.last_error or "")
    rewrite("tiers: [unclosed\n")
    assert store.policy.tiers["interactive"].latency_ms == 5000 and "not valid YAML" in (store.last_error or "")
    path.unlink()
    assert store.policy.tiers["interactive"].latency_ms == 5000  # a deleted file keeps the policy too
    rewrite(yaml.safe_dump(POLICY))
    assert store.policy.tiers["interactive"].latency_ms == 6000 and store.last_error is None
    assert store.status()["reloads"] == {"ok": 2, "rejected": 2}
    with pytest.raises(SlaPolicyError, match="does not exist"):
        PolicyStore(tmp_path / "missing.yaml")


def test_estimator_learns_p95_per_class_and_falls_back() -> None:
    est = Estimator(window=64, min_observations=3, priors=PRIORS)
    key = PlanKey("single", MODEL, False, False)
    assert est.predict(key, "B").source == "prior"
    for i in range(40):
        est.observe(key, "B", 1.0 + (i % 20) / 10, 0.5, 500, 20)  # 1.0 .. 2.9 s
    got = est.predict(key, "B")
    assert got.source == "class" and 2.6 <= got.latency_s <= 2.95 and 1.8 <= got.median_s <= 2.1
    assert est.predict(key, "C").source == "plan"  # no class C data: the plan's figures
    # The window forgets: after slow observations the p95 moves up.
    for _ in range(64):
        est.observe(key, "B", 8.0, 0.5, 500, 20)
    assert est.predict(key, "B").latency_s > 7.5


def test_load_model_shares_the_worker() -> None:
    now = [0.0]
    load = LoadModel({MODEL: 1}, clock=lambda: now[0])
    a = load.admit(MODEL, 1, 4.0)
    b = load.admit(MODEL, 1, 4.0)
    now[0] = 2.0
    load.advance()
    assert a.attained == pytest.approx(1.0) and b.attained == pytest.approx(1.0)  # half the worker each
    assert load.wait(MODEL, 2.0) == pytest.approx(4.0)  # each shares min(3, 2) seconds
    assert load.backlog(MODEL) == pytest.approx(6.0)
    load.finish(a.id)
    now[0] = 3.0
    load.advance()
    assert b.attained == pytest.approx(2.0)


def test_load_model_serves_higher_priorities_first_on_strict_models() -> None:
    now = [0.0]
    load = LoadModel({MODEL: 1}, strict_priority={MODEL}, clock=lambda: now[0])
    low = load.admit(MODEL, 1, 4.0)
    high_a = load.admit(MODEL, 3, 2.0)
    high_b = load.admit(MODEL, 3, 2.0)
    now[0] = 2.0
    load.advance()
    assert high_a.attained == high_b.attained == pytest.approx(1.0) and low.attained == 0.0
    # A new top-priority job shares with its peers only; a low one waits for all higher work.
    assert load.wait(MODEL, 1.0, priority=3) == pytest.approx(2.0)
    assert load.wait(MODEL, 1.0, priority=1) == pytest.approx(1.0 + 1.0 + 1.0)
    assert load.wait(MODEL, 1.0, priority=3, extra=5.0, extra_priority=1) == pytest.approx(2.0)
    assert load.finish_in(low) == pytest.approx(4.0 + 1.0 + 1.0)
    assert load.finish_in(high_a, extra=3.0, extra_priority=0) == pytest.approx(2.0)
    assert load.finish_in(high_a, extra=3.0, extra_priority=5) == pytest.approx(5.0)
    load.finish(high_a.id)
    load.finish(high_b.id)
    now[0] = 3.0
    load.advance()
    assert low.attained == pytest.approx(1.0)
    # Without strict priority (vLLM), everyone shares as before.
    fair = LoadModel({MODEL: 1}, clock=lambda: now[0])
    fair.admit(MODEL, 1, 4.0)
    fair.admit(MODEL, 3, 4.0)
    assert fair.wait(MODEL, 2.0, priority=3) == pytest.approx(4.0)


def _controller(policy: dict[str, Any] = POLICY, **cfg: Any) -> SlaController:
    config = load_config({"sla": {"enabled": True}, "models": [{"id": MODEL}], **cfg})
    store = PolicyStore(None)
    store._policy = parse_policy(policy)  # the store's file handling is tested above
    return SlaController(config, store, MemoryLedger(), quality=QUALITY, priors=PRIORS)


CLASS_POLICY = {"A": "none", "B": "single", "C": "multi"}


def _finish(ctl: SlaController, ticket: str, outcome: Outcome) -> Any:
    return asyncio.run(ctl.finish(ticket, outcome))


def _usage(ctl: SlaController, tenant: str, period: str) -> Any:
    return asyncio.run(ctl.ledger.usage(tenant, period))


def _tidy(ctl: SlaController, now: float) -> None:
    asyncio.run(ctl.tidy(now))


def _decide(ctl: SlaController, tenant: str | None = "acme", cls: str | None = "B", **kw: Any) -> Any:
    probs = {"A": 0.0, "B": 0.0, "C": 0.0}
    if cls:
        probs[cls] = 1.0
    args: dict[str, Any] = {
        "tenant": tenant,
        "headers": {},
        "complexity": Complexity(cls=cls, probabilities=probs, policy=CLASS_POLICY[cls]) if cls else None,
        "pinned_policy": None,
        "pinned_model": None,
        "top_k": 4,
        "max_tokens": 32,
        "cacheable": True,
        "use_response_cache": True,
    }
    args.update(kw)
    return asyncio.run(ctl.decide(**args))


def _teach(ctl: SlaController, policy: str, seconds: float, cls: str | None = None, n: int = 5) -> None:
    for _ in range(n):
        ctl.estimator.observe(PlanKey(policy, MODEL, False, False), cls, seconds, seconds / 2, 500, 20)


def test_decision_rule_best_quality_that_fits() -> None:
    ctl = _controller()
    _teach(ctl, "none", 1.0)
    _teach(ctl, "single", 3.0)
    _teach(ctl, "multi", 9.0)
    # Class B: single is best and fits interactive's 6 s.
    d = _decide(ctl, cls="B")
    assert d.plan.policy == "single" and not d.sla.degraded
    _finish(ctl, d.sla.ticket, Outcome(ok=True, latency_s=3.0, ttft_s=1.0, prompt_tokens=5, completion_tokens=5))
    # Class C: multi is best but breaks 6 s, so single; for the standard tier (20 s) multi fits.
    assert _decide(ctl, cls="C").plan.policy == "single"
    ctl.load.jobs.clear()
    ctl._tickets.clear()
    d = _decide(ctl, tenant=None, cls="C")
    assert d.plan.policy == "multi"
    multi = next(c for c in d.sla.candidates if c["plan"].startswith("multi"))
    assert multi["eligible"] and multi["predicted_latency_s"] == pytest.approx(9.0, rel=0.02)
    ctl.load.jobs.clear()
    ctl._tickets.clear()
    # A TTFT override rules out the plans whose TTFT does not fit.
    d = _decide(ctl, tenant=None, cls="C", headers={"x-slo-ttft-ms": "2000"})
    assert d.plan.policy == "single"
    # Ties go to the cheaper plan.
    tie = _controller()
    tie.planner.measured_quality = tie_q = {p: {"A": 0.5, "B": 0.5, "C": 0.5} for p in QUALITY}
    assert tie.quality_table(tie.store.policy) is tie_q
    _teach(tie, "none", 1.0)
    _teach(tie, "single", 3.0)
    assert _decide(tie, cls="B").plan.policy == "none"
    # A pinned policy is kept; a floor removes plans below it.
    ctl.load.jobs.clear()
    assert _decide(ctl, cls="A", pinned_policy="multi", tenant=None).plan.policy == "multi"
    ctl.load.jobs.clear()
    floor = {
        **POLICY,
        "tiers": {
            **POLICY["tiers"],
            "standard": {"priority": 2, "latency_ms": 20000, "quality_floor": {"min_policy": "single"}},
        },
    }
    fl = _controller(
        floor,
    )
    fl.planner.measured_quality = QUALITY
    _teach(fl, "none", 1.0)
    _teach(fl, "single", 3.0)
    d = _decide(fl, tenant=None, cls="A")
    assert d.plan.policy == "single" and all(not c["plan"].startswith("none") for c in d.sla.candidates)


def test_overload_degrades_lower_tiers_first_then_sheds() -> None:
    ctl = _controller()
    _teach(ctl, "none", 1.0)
    _teach(ctl, "single", 3.0)
    _teach(ctl, "multi", 9.0)
    # Four interactive single requests in flight: 12 s of work at the top priority.
    for _ in range(4):
        ctl.load.admit(MODEL, 3, 3.0, 60.0)
    # The standard tier waits for all of that higher work: multi (9 + 12 s) would miss 20 s, single fits.
    d = _decide(ctl, tenant=None, cls="C")
    assert d.plan.policy == "single" and d.sla.degraded
    multi = next(c for c in d.sla.candidates if c["plan"].startswith("multi"))
    assert multi["predicted_latency_s"] == pytest.approx(21.0, rel=0.02)
    # Another interactive one shares the worker with its peers only: single would take 3 + 4 x 3 = 15 s > 6 s,
    # so it degrades to `none` (1 + 4 x 1 = 5 s) rather than miss.
    d = _decide(ctl, cls="B")
    assert d.plan.policy == "none" and d.sla.degraded and "degraded under load" in d.reason
    # Now the interactive tier's quickest plan would take 6 s, over 0.85 x its 6 s: lower tiers are shed
    # (they still take CPU outside the model's step lock), with Retry-After.
    with pytest.raises(OverloadedError) as info:
        _decide(ctl, tenant="tiny", cls="B")
    assert 1 <= info.value.retry_after <= 60  # type: ignore[operator]
    # More load: the interactive tier is shed too, once even its fastest plan cannot make 6 s.
    for _ in range(4):
        ctl.load.admit(MODEL, 3, 3.0, 60.0)
    with pytest.raises(OverloadedError):
        _decide(ctl, cls="B")
    # Lower-priority work does not slow a higher tier: the torch worker serves higher priorities first.
    busy = _controller()
    _teach(busy, "none", 1.0)
    _teach(busy, "single", 3.0)
    for _ in range(6):
        busy.load.admit(MODEL, 1, 3.0, 60.0)
    d = _decide(busy, cls="B")
    assert d.plan.policy == "single" and not d.sla.degraded
    single = next(c for c in d.sla.candidates if c["plan"].startswith("single"))
    assert single["predicted_latency_s"] == pytest.approx(3.0, rel=0.05)
    # Unloaded, a target no plan can meet alone runs the fastest plan as best effort, not a 429.
    quiet = _controller()
    _teach(quiet, "none", 1.0)
    d = _decide(quiet, cls="B", headers={"x-slo-latency-ms": "100"})
    assert d.plan.policy == "none" and "even unloaded" in d.reason


def test_budget_and_caps() -> None:
    ctl = _controller()
    _teach(ctl, "none", 1.0)
    # tiny has 3000 tokens: the first request reserves 2048 (one call x max_model_len) ...
    first = _decide(ctl, tenant="tiny", cls="A")
    assert first.sla.tier == "batch"
    assert _usage(ctl, "tiny", "day").reserved_tokens == 2048
    # ... so a second cannot be reserved until the first settles.
    with pytest.raises(BudgetExhaustedError) as info:
        _decide(ctl, tenant="tiny", cls="A")
    assert info.value.retry_after is not None and info.value.retry_after > 0
    _finish(ctl, first.sla.ticket, Outcome(ok=True, latency_s=1, prompt_tokens=100, completion_tokens=20))
    usage = _usage(ctl, "tiny", "day")
    assert (usage.spent_tokens, usage.reserved_tokens) == (120, 0)
    second = _decide(ctl, tenant="tiny", cls="A")
    _finish(ctl, second.sla.ticket, Outcome(ok=False, latency_s=1))  # failed before the model ran: nothing
    assert _usage(ctl, "tiny", "day").spent_tokens == 120
    # A request that failed (or lost its client) after the model ran is charged what it ran; a second
    # report of the same ticket charges nothing.
    third = _decide(ctl, tenant="tiny", cls="A")
    ran = Outcome(ok=False, latency_s=1, prompt_tokens=300, completion_tokens=7)
    assert _finish(ctl, third.sla.ticket, ran) is not None
    assert _finish(ctl, third.sla.ticket, ran) is None
    assert _usage(ctl, "tiny", "day").spent_tokens == 120 + 307
    # A per-request cap below every plan's worst case is the client's mistake (400), not a 429.
    with pytest.raises(PlanUnavailableError, match="smallest is 2048"):
        _decide(ctl, tenant="acme", cls="A", headers={"x-budget-tokens": "1000"})
    # multi's worst case (5 calls x 2048) is over batch's 5000-token cap: never a candidate there.
    d = _decide(ctl, tenant="tiny", cls="C", pinned_policy=None)
    multi = next(c for c in d.sla.candidates if c["plan"].startswith("multi"))
    assert not multi["eligible"] and "over the cap" in multi["why_not"]


def test_measured_quality_table_from_router_labels() -> None:
    table = measured_quality(Path(__file__).resolve().parents[2] / "router" / "artifacts" / "labels.jsonl")
    assert set(table) >= {"none", "single", "multi"}
    assert table["none"]["A"] > table["single"]["A"]  # class A: no retrieval needed
    assert table["multi"]["C"] > table["none"]["C"]  # class C: multi-step pays


def test_expired_tickets_release_their_reservations() -> None:
    """A request whose report never comes: the router forgets it after 900 s of load, and the ledger
    releases its reservation, uncharged, once its lease has passed; a report that comes later charges
    nothing."""
    ctl = _controller()
    _teach(ctl, "none", 1.0)
    d = _decide(ctl, tenant="tiny", cls="A")
    ticket = d.sla.ticket
    assert isinstance(ticket, str) and len(ticket) == 32  # a uuid: unique across routers and restarts
    ctl.load.jobs[ctl._tickets[ticket].job_id].started = time.monotonic() - 10_000
    lease = ctl.store.policy.controller.ticket_lease_s
    _tidy(ctl, now=time.time() + 1)
    assert not ctl._tickets and _usage(ctl, "tiny", "day").reserved_tokens == 2048  # the lease holds it
    _tidy(ctl, now=time.time() + lease + 10)
    assert _usage(ctl, "tiny", "day").reserved_tokens == 0 and asyncio.run(ctl.ledger.open_tickets()) == 0
    assert _finish(ctl, ticket, Outcome(ok=True, latency_s=1, prompt_tokens=50, completion_tokens=5)) is None
    assert _usage(ctl, "tiny", "day").spent_tokens == 0


def test_shipped_policies_validate() -> None:
    root = Path(__file__).resolve().parents[2]
    for path in (root / "services" / "sla" / "policy.yaml", root / "bench" / "sla_bench.yaml"):
        policy = PolicyStore(path, models=[MODEL]).policy
        assert {"interactive", "standard", "batch"} <= set(policy.tiers)


def test_admitted_requests_are_protected_and_errors_calibrate() -> None:
    ctl = _controller()
    _teach(ctl, "none", 1.0)
    _teach(ctl, "single", 3.0)
    # An admitted standard request with 4 s of work left and 6 s to its deadline.
    ctl.load.admit(MODEL, 2, 4.0, 6.0)
    # Another standard one would prefer single (3 + 3 shared = 6 s, well within its 20 s), but the admitted
    # one would then need 4 + 3 = 7 s: it gets `none` (4 + 1 = 5 s for the admitted one).
    d = _decide(ctl, tenant=None, cls="B")
    assert d.plan.policy == "none" and d.sla.degraded
    single = next(c for c in d.sla.candidates if c["plan"].startswith("single"))
    assert "admitted request" in single["why_not"]
    # Observed latencies twice the predictions: predictions are scaled by the 90th percentile ratio.
    quiet = _controller()
    _teach(quiet, "none", 1.0)
    _teach(quiet, "single", 3.0)
    base = _decide(quiet, cls="B").sla
    quiet.load.jobs.clear()
    now = time.monotonic()
    quiet.calibrator.ratios[3].extend([(now, 2.0)] * 20)  # acme is interactive: priority 3
    assert quiet.calibration(3) == 2.0 and quiet.calibration() == 2.0  # pooled while others have none
    idle = _decide(quiet, cls="B").sla  # nothing in flight: no load to correct, the plans' p95 stand
    assert {c["plan"]: c["predicted_latency_s"] for c in idle.candidates} == {
        c["plan"]: c["predicted_latency_s"] for c in base.candidates
    }
    quiet.load.jobs.clear()
    quiet.load.admit(MODEL, 1, 3.0)  # busy with lower-priority work, which does not delay interactive
    scaled = _decide(quiet, cls="B").sla
    assert scaled.calibration == 2.0
    first = {c["plan"]: c["predicted_latency_s"] for c in base.candidates}
    for c in scaled.candidates:
        assert c["predicted_latency_s"] == pytest.approx(2 * first[c["plan"]], rel=0.01)
    quiet.calibrator.ratios[1].extend([(now, 3.0)] * 20)
    assert quiet.calibration(1) == 3.0 and quiet.calibration(3) == 2.0  # each priority its own
    quiet.calibrator.ratios.clear()
    quiet.calibrator.ratios[3].extend([(now, 0.5)] * 20)
    assert quiet.calibration(3) == 1.0  # never below 1
    quiet.calibrator.ratios[3].clear()
    quiet.calibrator.ratios[3].extend([(now - 600, 3.0)] * 20)
    assert quiet.calibration(3) == 1.0  # old ratios expire: a burst of misses does not shed for ever


def test_model_quality_table_lets_the_stronger_model_win_on_quality_and_the_cheaper_on_latency() -> None:
    from router.quality import QualityTable

    big = "qwen2.5-coder-0.5b-instruct"
    table = {
        MODEL: {p: {"A": 0.6, "B": 0.1, "C": 0.05} for p in ("none", "single", "multi")},
        big: {
            "none": {"A": 0.6, "B": 0.2, "C": 0.1},
            "single": {"A": 0.6, "B": 0.7, "C": 0.3},
            "multi": {"A": 0.6, "B": 0.7, "C": 0.5},
        },
    }
    cost = {m: {p: {"latency_s": 1.0} for p in ("none", "single", "multi")} for m in (MODEL, big)}
    config = load_config({"sla": {"enabled": True}, "models": [{"id": MODEL}, {"id": big}]})
    store = PolicyStore(None)
    store._policy = parse_policy(POLICY)
    ctl = SlaController(config, store, MemoryLedger(), model_quality=QualityTable(table, cost))
    for policy, seconds in (("none", 1.0), ("single", 3.0), ("multi", 9.0)):
        for m, factor in ((MODEL, 1.0), (big, 2.0)):
            for _ in range(5):
                ctl.estimator.observe(PlanKey(policy, m, False, False), None, seconds * factor, seconds, 500, 20)
    # Dry runs: each decision alone, with nothing admitted before it.
    # Standard tier (20 s): the big model's single (6 s) has the best expected quality for class B.
    d = _decide(ctl, tenant=None, cls="B", dry_run=True)
    assert (d.plan.model, d.plan.policy) == (big, "single")
    # 4 s: no single fits; the big model's none (0.2) beats the small model's none (0.1) on the same table.
    d = _decide(ctl, tenant="acme", cls="B", headers={"x-slo-latency-ms": "4000"}, dry_run=True)
    assert (d.plan.model, d.plan.policy) == (big, "none")
    # 1.5 s: only the small model is fast enough.
    d = _decide(ctl, tenant="acme", cls="B", headers={"x-slo-latency-ms": "1500"}, dry_run=True)
    assert (d.plan.model, d.plan.policy) == (MODEL, "none")
    assert d.sla.ticket is None and not ctl._tickets and not ctl.load.jobs
    assert ctl.quality_table(store.policy)["by_model"] == table


def test_a_slower_plan_must_buy_its_seconds_at_the_tiers_rate() -> None:
    """The router's rule in the controller: the best expected quality net of quality_per_second x the predicted
    latency. Class C on the standard tier (20 s): multi expects 0.5 in 9 s, single 0.2 in 3 s, none 0.05 in 1 s
    (QUALITY): multi buys 0.05 F1 a second over single."""

    def plan(rate: float | None, cls: str) -> Any:
        standard = {"priority": 2, "latency_ms": 20000, **({} if rate is None else {"quality_per_second": rate})}
        ctl = _controller({**POLICY, "tiers": {**POLICY["tiers"], "standard": standard}})
        for policy, seconds in (("none", 1.0), ("single", 3.0), ("multi", 9.0)):
            _teach(ctl, policy, seconds)
        return _decide(ctl, tenant=None, cls=cls, dry_run=True)

    d = plan(None, "C")  # the tier sets none: router.quality_per_second, 0.01 by default
    assert d.plan.policy == "multi" and "net of 0.01 a second" in d.reason
    # single's 0.2 - 0.18 beats none's 0.05 - 0.06 and multi's 0.5 - 0.54
    d = plan(0.06, "C")
    assert d.plan.policy == "single" and "net of 0.06 a second" in d.reason
    # A rate of 0 is the best expected quality whatever it takes within the target.
    d = plan(0, "B")
    assert d.plan.policy == "single" and "net of" not in d.reason


def test_a_cascade_is_planned_where_its_expected_second_step_fits_and_is_billed_at_its_models_price() -> None:
    """With the cascade on, a plan of the small model gets the next model's second step when its predicted latency
    plus escalate_share x the next model's fits the target; the reservation covers the step's worst case; an
    escalated answer's tokens are charged at the next model's price and teach neither plan's latency."""
    big = "qwen2.5-coder-0.5b-instruct"
    config = load_config(
        {
            "sla": {"enabled": True},
            "models": [{"id": MODEL}, {"id": big}],
            "router": {"cascade": {"enabled": True, "escalate_share": 0.5}},
        }
    )
    prices = {
        MODEL: {"prompt_per_1m": 1.0, "completion_per_1m": 1.0},
        big: {"prompt_per_1m": 10.0, "completion_per_1m": 10.0},
    }
    store = PolicyStore(None)
    store._policy = parse_policy({**POLICY, "prices": prices})
    ctl = SlaController(config, store, MemoryLedger(), quality=QUALITY, priors=PRIORS)
    for m, factor in ((MODEL, 1.0), (big, 4.0)):
        for _ in range(5):
            ctl.estimator.observe(PlanKey("single", m, False, False), None, 2.0 * factor, 1.0, 500, 20)
    # Standard tier, 20 s, class B: single on the small model (2 s); the big model's step takes 8 s, half the time.
    d = _decide(ctl, tenant=None, cls="B", pinned_policy="single", dry_run=True)
    assert (d.plan.model, d.plan.escalate_to) == (MODEL, big)
    assert (
        d.sla.cascade["planned"]
        and d.sla.cascade["expected_latency_s"] == pytest.approx(6.0, rel=0.02)
        and "cascade: " in d.reason
    )
    # 5 s: the small plan fits (2 s), its cascade (2 + 0.5 x 8 = 6 s) does not.
    d = _decide(ctl, tenant="acme", cls="B", pinned_policy="single", headers={"x-slo-latency-ms": "5000"}, dry_run=True)
    assert d.plan.model == MODEL and d.plan.escalate_to is None
    assert not d.sla.cascade["planned"] and "over the 5000 ms target" in d.sla.cascade["why_not"]
    # A request that names its model is never escalated.
    d = _decide(ctl, tenant=None, cls="B", pinned_policy="single", pinned_model=MODEL, dry_run=True)
    assert d.plan.escalate_to is None and d.sla.cascade is None
    # Admitted: the reservation holds one more call of the big model; the escalated answer is billed in two parts.
    d = _decide(ctl, tenant="acme", cls="B", pinned_policy="single")
    assert d.plan.escalate_to == big
    limit = config.model(MODEL).max_model_len + config.model(big).max_model_len
    assert _usage(ctl, "acme", "day").reserved_tokens == limit
    before = ctl.estimator.predict(PlanKey("single", MODEL, False, False), None).latency_s
    outcome = Outcome(
        ok=True,
        latency_s=30.0,
        prompt_tokens=1000,
        completion_tokens=40,
        escalated_to=big,
        escalation_prompt_tokens=500,
        escalation_completion_tokens=20,
    )
    _finish(ctl, d.sla.ticket, outcome)
    usage = _usage(ctl, "acme", "day")
    assert usage.spent_tokens == 1040 and usage.reserved_tokens == 0
    assert usage.spent_micros == 520 * 1 + 520 * 10  # each model's tokens at its own price
    assert ctl.estimator.predict(PlanKey("single", MODEL, False, False), None).latency_s == before


def test_qualities_within_the_tie_margin_go_to_the_cheaper_plan() -> None:
    from router.eligibility import Candidate
    from router.estimates import Estimate
    from router.planning import QUALITY_TIE

    est = Estimate(1.0, 1.0, 0.5, 100, 10, 5, "plan")

    def cand(policy: str, quality: float, tokens: float) -> Candidate:
        return Candidate(PlanKey(policy, MODEL, False, False), est, quality, tokens, 0.0, 2048, 0, pred_latency=1.0)

    # 0.5024 and 0.5026 straddle a rounding bucket of 0.005 but lie 0.0002 apart: a tie, the cheaper wins.
    cheap, dear = cand("none", 0.5024, 100), cand("single", 0.5026, 600)
    assert SlaController.best([dear, cheap]) is cheap
    # Just over the margin apart, quality wins.
    better = cand("multi", 0.5026 + QUALITY_TIE + 0.0001, 1500)
    assert SlaController.best([cheap, dear, better]) is better


def test_money_budgets_charge_by_price_and_cap_by_cost() -> None:
    policy = {
        **POLICY,
        "prices": {MODEL: {"prompt_per_1m": 2.0, "completion_per_1m": 4.0}},
        "tenants": {"payg": {"api_keys": ["k3"], "tier": "standard", "budget": {"cost": 0.01}}},
    }
    ctl = _controller(policy)
    _teach(ctl, "none", 1.0)
    # The worst case of one call is 2048 tokens at the dearer price (4 per million): 8,192 micros.
    first = _decide(ctl, tenant="payg", cls="A")
    assert _usage(ctl, "payg", "day").reserved_micros == 8192
    with pytest.raises(BudgetExhaustedError):  # 0.01 - 0.008192 left: no plan's worst case fits
        _decide(ctl, tenant="payg", cls="A")
    settled = _finish(ctl, first.sla.ticket, Outcome(ok=True, latency_s=1, prompt_tokens=1000, completion_tokens=100))
    usage = _usage(ctl, "payg", "day")
    assert (usage.spent_micros, usage.reserved_micros) == (1000 * 2 + 100 * 4, 0)
    assert settled is not None and settled.budget is not None
    assert settled.budget["spent_cost"] == pytest.approx(0.0024)
    # A per-request money cap below every plan's worst case is the client's plan problem: 400, not 429.
    capped = {
        **policy,
        "tiers": {**policy["tiers"], "standard": {"priority": 2, "latency_ms": 20000, "max_cost_per_request": 0.005}},
    }
    ctl = _controller(capped)
    _teach(ctl, "none", 1.0)
    with pytest.raises(PlanUnavailableError, match="cost cap"):
        _decide(ctl, tenant="payg", cls="A")


def test_allowed_tiers_name_what_a_tenant_may_pick() -> None:
    policy = parse_policy(
        {
            **POLICY,
            "tenants": {
                "pinned": {"api_keys": ["k4"], "tier": "standard", "allowed_tiers": ["batch"]},
                "vip": {"api_keys": ["k5"], "tier": "batch", "allowed_tiers": ["interactive"]},
            },
        }
    )
    assert resolve(policy, "pinned", {"x-sla-tier": "batch"}).tier == "batch"
    assert resolve(policy, "pinned", {"x-sla-tier": "standard"}).tier == "standard"  # its own tier, always
    with pytest.raises(SlaOverrideError, match="allowed: batch, standard"):
        resolve(policy, "pinned", {"x-sla-tier": "interactive"})
    # An allowed tier may be above the tenant's own: an explicit grant.
    assert resolve(policy, "vip", {"x-sla-tier": "interactive"}).priority == 3
    # Without allowed_tiers: the tenant's tier and every tier of lower priority.
    base = parse_policy(POLICY)
    assert resolve(base, "acme", {"x-sla-tier": "batch"}).tier == "batch"
    with pytest.raises(SlaOverrideError):
        resolve(base, "tiny", {"x-sla-tier": "standard"})


def test_slo_accounting_counts_met_missed_and_failed() -> None:
    from router.sla_metrics import SLA_ATTAINMENT, SLA_REQUESTS

    def count(outcome: str) -> float:
        return float(SLA_REQUESTS.labels("interactive", outcome).value())

    before = {o: count(o) for o in ("met", "missed", "failed")}
    ctl = _controller()
    _teach(ctl, "none", 1.0)
    # acme is interactive: 6,000 ms end to end, 3,000 ms to the first token.
    outcomes = [
        (Outcome(ok=True, latency_s=1.0, ttft_s=0.5), True),
        (Outcome(ok=True, latency_s=7.0, ttft_s=0.5), False),  # too slow
        (Outcome(ok=True, latency_s=1.0, ttft_s=3.5), False),  # first token too late
        (Outcome(ok=False, latency_s=1.0), False),  # failed
    ]
    last = None
    for outcome, met in outcomes:
        last = _decide(ctl, cls="A")
        settled = _finish(ctl, last.sla.ticket, outcome)
        assert settled is not None and settled.met is met
    assert {o: count(o) - before[o] for o in before} == {"met": 1, "missed": 2, "failed": 1}
    assert SLA_ATTAINMENT.labels("interactive").value() == pytest.approx(0.25)
    # A ticket settles once: a late second report changes nothing.
    assert last is not None and _finish(ctl, last.sla.ticket, Outcome(ok=True, latency_s=1.0)) is None
    assert count("met") - before["met"] == 1


@pytest.mark.unit
def test_a_lower_tier_by_header_keeps_the_tighter_caps() -> None:
    """Picking a lower tier brings its latency targets and priority, not its larger allowance: the token
    and cost caps are the tighter of the two tiers'."""
    policy = parse_policy(
        {
            "default_tier": "gold",
            "tiers": {
                "gold": {"priority": 2, "latency_ms": 5000, "max_tokens_per_request": 64, "max_cost_per_request": 0.01},
                "bulk": {"priority": 1, "latency_ms": 60000, "max_tokens_per_request": 4096},
            },
            "tenants": {"t": {"api_keys": ["k"], "tier": "gold"}},
            "prices": {MODEL: {"prompt_per_1m": 1.0, "completion_per_1m": 2.0}},
        }
    )
    slo = resolve(policy, "t", {"x-sla-tier": "bulk"})
    assert (slo.tier, slo.priority, slo.latency_ms) == ("bulk", 1, 60000)
    assert (slo.max_tokens, slo.max_cost) == (64, 0.01)
    assert resolve(policy, "t", {}).max_tokens == 64
