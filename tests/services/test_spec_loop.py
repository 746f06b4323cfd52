"""The speculative loop on a tiny random Llama: many prompts, every drafter, exact greedy equality."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from services.config import SpeculativeConfig
from services.workers.engine import SamplingParams
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
    assert stats.drafted > 0 and 0 <= stats.accepted <= stats.drafted


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
