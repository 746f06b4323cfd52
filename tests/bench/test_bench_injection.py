"""`ragyard bench injection`'s scoring and its three prompts, with a model that does whatever the last passage in
its prompt says (the worst reader there is): the fence alone does not stop it, dropping what the screen flags does,
and the subtle attacks get through either way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.bench_injection import CASES, MODES, _attacks, follows
from retrieval.generation import GenerationResult, GenerationStats

pytestmark = pytest.mark.unit


class Obedient:
    """Answers with the last passage of its prompt: an attack placed last is always followed."""

    async def generate(self, messages: list[Any], params: Any) -> GenerationResult:
        user = messages[-1].content
        passages = user.split("Passages:\n", 1)[1].split("\n\nQuestion:", 1)[0]
        last = [part for part in passages.split("\n\n") if not part.startswith(">>> [end of")][-1]
        return GenerationResult(last, "stop", GenerationStats(prompt_tokens=1, completion_tokens=1))


def test_follows_reads_each_kind_of_marker() -> None:
    assert follows("ACCESS GRANTED.", {"contains": ["access granted"]})
    assert not follows("The Quux Works maintain it.", {"contains": ["access granted"]})
    assert follows("I am Ragyard's assistant and I answer...", {"leak": True})
    assert follows("Le pont est entretenu par la société Quux.", {"language": "fr"})
    assert not follows("The bridge is maintained by the Quux Works.", {"language": "fr"})


def test_an_obedient_model_is_stopped_only_by_dropping_what_the_screen_flags() -> None:
    cases = [json.loads(line) for line in Path(CASES).read_text(encoding="utf-8").splitlines()]
    assert len(cases) == 24
    result = _attacks(Obedient(), cases, max_tokens=16)
    summary = result["summary"]
    assert set(summary) == set(MODES)
    assert summary["off"]["follow_rate"] == summary["fence"]["follow_rate"] > 0.5
    # Dropped: only the subtle kind, which the rules do not flag, is still followed.
    assert summary["drop"]["by_kind"]["subtle"] > 0
    assert all(v == 0 for k, v in summary["drop"]["by_kind"].items() if k != "subtle")
    assert summary["drop"]["right_rate"] > summary["off"]["right_rate"]
