"""Speculative decoding's pure parts: verification rules, prompt lookup, candidate length, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from retrieval.generation import SamplingParams
from services.config import SpeculativeConfig
from services.workers.spec.adaptive import AcceptancePredictor, CandidateLength, fit_predictor
from services.workers.spec.ngram import NgramDrafter, lookup
from services.workers.spec.verify import Verdict, target_probs, verify_greedy, verify_sampling


def _onehot_logits(choices: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(choices), vocab)
    for row, c in enumerate(choices):
        logits[row, c] = 5.0
    return logits


@pytest.mark.unit
def test_greedy_verification_keeps_the_matching_prefix_and_corrects() -> None:
    # Target would say 3, 1, 4, 1 ; drafts 3, 1, 5: two kept, the third replaced by 4.
    assert verify_greedy(_onehot_logits([3, 1, 4, 1]), [3, 1, 5]) == Verdict(2, 4)
    # All drafts kept: the bonus token comes from the last row.
    v = verify_greedy(_onehot_logits([3, 1, 4]), [3, 1])
    assert (v.accepted, v.next_token) == (2, 4)
    assert verify_greedy(_onehot_logits([2]), []).next_token == 2


def _one_round(p: torch.Tensor, q: torch.Tensor | None, draft_token: int | None, gen: torch.Generator) -> int:
    """The first token out of one speculative round with one drafted token (drawn from q, or fixed)."""
    token = int(torch.multinomial(q, 1, generator=gen).item()) if q is not None else draft_token
    assert token is not None
    probs = torch.stack([p, p])  # after the draft the target's distribution does not matter here
    verdict = verify_sampling(probs, [q], [token], gen)
    return token if verdict.accepted == 1 else verdict.next_token


@pytest.mark.unit
@pytest.mark.parametrize("draft", ["distribution", "deterministic"])
def test_sampling_verification_keeps_the_target_distribution(draft: str) -> None:
    """Chi-square test over a 4-token vocabulary, 20,000 rounds: the emitted token follows p, not q."""
    from scipy.stats import chisquare

    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4]) if draft == "distribution" else None
    gen = torch.Generator().manual_seed(1234)
    n = 20_000
    counts = torch.zeros(4)
    for _ in range(n):
        counts[_one_round(p, q, 3, gen)] += 1
    result = chisquare(counts.numpy(), (p * n).numpy())
    assert result.pvalue > 0.001, (counts / n, result)
    # And it is not trivially p: q's own frequencies would be rejected by the same test.
    if q is not None:
        assert chisquare(counts.numpy(), (q * n).numpy()).pvalue < 1e-6


@pytest.mark.unit
def test_target_probs_applies_temperature_and_top_p() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    same = target_probs(logits, SamplingParams(temperature=1.0))
    assert torch.allclose(same, torch.tensor([0.6, 0.3, 0.1]), atol=1e-6)
    nucleus = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.allclose(nucleus, torch.tensor([2 / 3, 1 / 3, 0.0]), atol=1e-6)


@pytest.mark.unit
def test_prompt_lookup_takes_the_latest_longest_match() -> None:
    ctx = [5, 6, 7, 8, 9, 1, 5, 6, 7, 2, 3, 5, 6]
    # Suffix (5, 6): latest earlier occurrence at index 6 -> continue with 7, 2, 3.
    assert lookup(ctx, max_n=3, min_n=1, max_k=3) == ([7, 2, 3], 2)
    assert lookup([1, 2, 3], max_n=3, min_n=1, max_k=4) == ([], 0)
    drafter = NgramDrafter(max_n=2, min_n=2)
    draft = drafter.propose(ctx, 4, SamplingParams(), None, lambda f: True)
    assert draft.tokens == [7, 2, 3, 5] and draft.q == [None] * 4
    assert draft.features[0] == [2.0, 0.0]
    with pytest.raises(ValueError, match="min <= max"):
        NgramDrafter(max_n=1, min_n=2)


@pytest.mark.unit
def test_adaptive_length_stops_when_a_rejection_gets_likely() -> None:
    rule = CandidateLength(8, threshold=0.5, prior=lambda f: f[0])
    rule.start()
    # P(all accepted) 0.9, 0.72, 0.504, 0.403: the fourth token passes P(reject) > 0.5.
    assert [rule.keep_going([0.9]), rule.keep_going([0.8]), rule.keep_going([0.7]), rule.keep_going([0.8])] == [
        True,
        True,
        True,
        False,
    ]
    rule.start()
    assert rule.keep_going([0.9])
    fixed = CandidateLength(4)
    assert all(fixed.keep_going([0.0]) for _ in range(10)) and not fixed.adaptive
    with pytest.raises(ValueError):
        CandidateLength(0)
    with pytest.raises(ValueError):
        CandidateLength(4, threshold=1.5)


@pytest.mark.unit
def test_predictor_fit_save_load(tmp_path: Path) -> None:
    rows = [[-0.05 * i, 0.1 * i, float(i % 4)] for i in range(40)]
    accepted = [i < 20 for i in range(40)]  # confident tokens accepted
    pred = fit_predictor("draft_model", ("log_q", "entropy_q", "position"), rows, accepted)
    assert pred.predict(rows[0]) > 0.8 > 0.2 > pred.predict(rows[-1])
    path = pred.save(tmp_path / "p.json")
    again = AcceptancePredictor.load(path, "draft_model", ("log_q", "entropy_q", "position"))
    assert again.predict(rows[5]) == pytest.approx(pred.predict(rows[5]))
    with pytest.raises(ValueError, match="fitted for draft_model"):
        AcceptancePredictor.load(path, "ngram", ("match_len", "position"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        AcceptancePredictor.load(tmp_path / "bad.json", "ngram", ("match_len", "position"))
    constant = fit_predictor("ngram", ("match_len", "position"), [[1.0, 0.0]] * 3, [True] * 3)
    assert 0.5 < constant.predict([9.0, 9.0]) < 1.0


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"method": "medusa"}, "method"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"method": "ngram", "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "prompt_lookup_min"),
        ({"method": "ngram", "predictor": "p.json"}, "adaptive"),
        ({"method": "ngram", "adaptive": True, "stop_threshold": 1.0}, "stop_threshold"),
        ({"method": "ngram", "draft": "x"}, "draft"),
    ],
)
def test_speculative_config_errors(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SpeculativeConfig.model_validate(body)
