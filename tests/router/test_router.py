from __future__ import annotations

import pytest

from retrieval.errors import UnknownPolicyError
from router.errors import UnknownModelError
from router.routing import ConfigRouter
from services.config import load_config

pytestmark = pytest.mark.unit


def test_auto_uses_default_model_and_config_policy() -> None:
    # Without a quality table to route by, `auto` is the first configured model.
    router = ConfigRouter(
        load_config({"retrieval": {"default_policy": "none", "top_k": 3}, "router": {"quality_table": None}})
    )
    d = router.route("q", model="auto")
    assert d.plan.policy == "none" and d.plan.top_k == 3
    assert d.plan.model == "smollm2-135m-instruct"
    assert "from config" in d.reason


def test_request_choices_win_and_are_checked() -> None:
    router = ConfigRouter(load_config({}))
    d = router.route("q", policy="single", top_k=7, max_tokens=9, cacheable=False)
    assert (d.plan.policy, d.plan.top_k, d.plan.max_tokens, d.plan.use_response_cache) == ("single", 7, 9, False)
    with pytest.raises(UnknownPolicyError, match="valid: adaptive, dragin, multi, none, single"):
        router.route("q", policy="psychic")
    with pytest.raises(UnknownModelError, match="available: auto, smollm2-135m-instruct"):
        router.route("q", model="gpt-9")
