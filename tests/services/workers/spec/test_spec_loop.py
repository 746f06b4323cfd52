"""The speculative loop on a tiny random Llama: many prompts, every drafter, exact greedy equality."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from retrieval.generation import SamplingParams
from services.config import SpeculativeConfig
from services.workers.spec.decode import SpecStats, build_setup, speculative_steps


@pytest.fixture(scope="module")
def tiny() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def plain_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec",
    [
        {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4},
        {"method": "ngram", "num_speculative_tokens": 5, "adaptive": True, "stop_threshold": 0.7},
        {"method": "self_draft", "self_draft_layers": 2, "num_speculative_tokens": 3},
        {"method": "self_draft", "self_draft_layers": 1, "num_speculative_tokens": 4, "adaptive": True},
    ],
    ids=["ngram", "ngram-adaptive", "self-draft", "self-draft-adaptive"],
)
def test_speculative_greedy_equals_plain_greedy_on_many_prompts(tiny: Any, spec: dict[str, Any]) -> None:
    setup = build_setup(SpeculativeConfig.model_validate(spec), tiny, torch.device("cpu"), "")
    gen = torch.Generator().manual_seed(5)
    stats = SpecStats()
    for _ in range(25):
        # Repetitive prompts give prompt lookup something to match.
        base = torch.randint(0, 48, (6,), generator=gen).tolist()
        prompt = base * 3 + torch.randint(0, 48, (4,), generator=gen).tolist()
        expected = plain_greedy(tiny, prompt, 16)
        got = [
            t
            for t, _ in speculative_steps(
                tiny, "cpu", threading.Lock(), prompt, 16, SamplingParams(), None, setup, set(), stats
            )
        ]
        assert got == expected
    assert stats.drafted > 0 and 0 < stats.accepted <= stats.drafted  # drafts were taken, not only made


@pytest.mark.unit
def test_speculative_loop_stops_at_eos_and_max_tokens(tiny: Any) -> None:
    setup = build_setup(SpeculativeConfig(method="self_draft", self_draft_layers=2), tiny, torch.device("cpu"), "")
    prompt = [1, 2, 3, 4, 1, 2, 3]
    expected = plain_greedy(tiny, prompt, 12)
    eos = expected[5]
    got = [
        t
        for t, _ in speculative_steps(
            tiny, "cpu", threading.Lock(), prompt, 12, SamplingParams(), None, setup, {eos}, SpecStats()
        )
    ]
    assert got == expected[: expected.index(eos) + 1]
    got = [
        t
        for t, _ in speculative_steps(
            tiny, "cpu", threading.Lock(), prompt, 3, SamplingParams(), None, setup, set(), SpecStats()
        )
    ]
    assert got == expected[:3]


@pytest.mark.unit
def test_width_costs_pad_to_the_cheapest_width_and_price_it() -> None:
    from services.workers.spec.costs import WidthCosts

    # This CPU's shape: 2 and 3 rows are slow in MKL, 4 and more cheap again.
    costs = WidthCosts((1.0, 2.2, 3.5, 2.3, 2.2, 2.4, 2.5, 2.6))
    assert [costs.padded(w) for w in range(1, 9)] == [1, 2, 5, 5, 5, 6, 7, 8]
    assert costs.cost(3) == pytest.approx(2.2) and costs.cost(1) == 1.0
    assert costs.padded(12) == 12 and costs.cost(16) == pytest.approx(2.6 * 2)
    assert costs.describe()["padded_width"][2] == 5
    with pytest.raises(ValueError):
        WidthCosts((1.0, 0.0))


@pytest.mark.unit
def test_the_cost_rule_drafts_on_when_tokens_are_free_and_stops_when_they_are_not() -> None:
    from services.workers.spec.adaptive import CandidateLength
    from services.workers.spec.costs import WidthCosts

    costs = WidthCosts((1.0, 2.2, 3.5, 2.3, 2.2, 2.4, 2.5, 2.6))

    def drafted(a: float, token_cost: float) -> int:
        rule = CandidateLength(7, costs=costs, prior=lambda f: a, token_cost=lambda f: token_cost)
        rule.start()
        n = 1
        while n < 7 and rule.keep_going([0.0]):
            n += 1
        return n

    assert drafted(0.9, 0.0) == 7  # prompt lookup that keeps matching: the whole candidate
    assert drafted(0.3, 0.4) == 1  # a weak draft model: one token, then stop
    assert CandidateLength(4, costs=costs).describe()["rule"] == "cost"


@pytest.mark.unit
@pytest.mark.parametrize("rule", ["fixed", "cost"])
def test_padded_verifies_and_the_hybrid_drafter_keep_greedy_exact(tiny: Any, rule: str) -> None:
    """Verifies padded to width 8 (a table that makes the widest cheapest) and prompt lookup falling back
    to a shallow draft model: token for token what plain greedy decoding gives."""
    from services.workers.spec.costs import WidthCosts
    from services.workers.spec.decode import SpecSetup
    from services.workers.spec.draft_model import DraftModelDrafter
    from services.workers.spec.hybrid import HybridDrafter
    from services.workers.spec.ngram import NgramDrafter
    from services.workers.spec.self_draft import SelfDrafter

    shallow = SelfDrafter(tiny, torch.device("cpu"), 1).model
    costs = WidthCosts((1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 2.0))

    def new_drafter() -> HybridDrafter:
        return HybridDrafter(NgramDrafter(3, 1), DraftModelDrafter(shallow, torch.device("cpu")), 0.3)

    setup = SpecSetup("hybrid", new_drafter, 5, costs=costs, cost_rule=rule == "cost")
    gen = torch.Generator().manual_seed(7)
    stats = SpecStats(record_samples=True)
    for _ in range(15):
        base = torch.randint(0, 48, (5,), generator=gen).tolist()
        prompt = base * 2 + torch.randint(0, 48, (5,), generator=gen).tolist()
        expected = plain_greedy(tiny, prompt, 14)
        got = [
            t
            for t, _ in speculative_steps(
                tiny, "cpu", threading.Lock(), prompt, 14, SamplingParams(), None, setup, set(), stats
            )
        ]
        assert got == expected
    lookups = {f[0] for f, _ in stats.samples}
    assert lookups == {0.0, 1.0}  # both drafters proposed
    assert setup.describe()["padded_width"] == [1, 8, 8, 8, 8, 8, 8, 8]
