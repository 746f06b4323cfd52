"""The torch engine's logits shaping, exactly: OpenAI's penalties subtract what they say from the tokens
generated so far, the constraint leaves only tokens its parser allows, logprobs are the model's own."""

from __future__ import annotations

import math
from typing import Any

import pytest

from retrieval.generation import ResponseFormat, SamplingParams
from services.workers.engines.shaping import EnforcerTables, OutputShaper
from tests.utils.factories import honours_every_schema_form


class _Tokenizer:
    """Ten one-character tokens: enough for the arithmetic (the real tokenizer is tested below)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


def test_penalties_subtract_counts_and_presence() -> None:
    import torch

    shaper = OutputShaper(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), _Tokenizer(), None)
    logits = torch.zeros(10)
    for token in (3, 3, 7):
        shaper.observe(token, logits)
    out = shaper.process(logits)
    assert out[3].item() == pytest.approx(-(2 * 0.5 + 0.25))
    assert out[7].item() == pytest.approx(-(0.5 + 0.25))
    assert out[[0, 1, 2, 4, 5, 6, 8, 9]].abs().sum().item() == 0
    assert shaper.take() is None  # no logprobs were asked for


def test_logprobs_are_the_models_with_top_alternatives() -> None:
    import torch

    shaper = OutputShaper(SamplingParams(logprobs=2, frequency_penalty=1.0), _Tokenizer(), None, eos_ids={9})
    logits = torch.tensor([0.0, 2.0, 1.0, 0, 0, 0, 0, 0, 0, 5.0])
    shaper.observe(1, logits)
    shaper.observe(9, logits)  # the end of turn is not reported
    (got,) = shaper.take() or []
    expected = logits.log_softmax(-1)
    assert got.token == "b" and math.isclose(got.logprob, float(expected[1]), rel_tol=1e-6)
    assert [t for t, _ in got.top] == ["j", "b"]
    assert shaper.take() == []


@pytest.mark.model
def test_the_json_constraint_allows_only_json(engine: Any) -> None:
    import torch

    tables = EnforcerTables(engine.tokenizer, engine.eos_ids)
    params = SamplingParams(response_format=ResponseFormat(type="json_object"))
    shaper = OutputShaper(params, engine.tokenizer, tables, engine.eos_ids)
    out = shaper.process(torch.zeros(len(engine.tokenizer)))
    allowed = [engine.tokenizer.decode([i]) for i in torch.nonzero(out == 0).flatten().tolist()]
    assert allowed and all(t.strip() in ("{", "") or t.lstrip().startswith("{") for t in allowed), allowed[:20]


@pytest.mark.integration
@pytest.mark.model
def test_every_schema_form_the_edge_accepts_is_honoured_by_the_enforcer(engine: Any) -> None:
    finishes = honours_every_schema_form(engine)
    assert sum(f == "stop" for f in finishes.values()) >= len(finishes) - 1, finishes
