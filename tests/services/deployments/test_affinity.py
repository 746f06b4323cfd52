"""The worker request router's choice: rendezvous-hash owners of a request's chunks (pure functions; the
router itself runs in tests/scale on a real cluster)."""

from __future__ import annotations

from collections import Counter

import pytest

from core.chunks import PromptChunk
from services.deployments.affinity import affinity_keys, owner, rank

pytestmark = pytest.mark.unit

REPLICAS = ["r-a", "r-b"]


def test_a_chunk_has_one_owner_everywhere_and_owners_share_the_chunks() -> None:
    keys = [f"chunk {n}" for n in range(400)]
    owners = Counter(owner(k, REPLICAS) for k in keys)
    # The same answer whatever the order the replicas are listed in (every gateway's router agrees) ...
    assert all(owner(k, REPLICAS) == owner(k, list(reversed(REPLICAS))) for k in keys)
    # ... and about half each.
    assert 160 <= owners["r-a"] <= 240


def test_a_replica_that_joins_takes_chunks_only_from_the_others_share() -> None:
    keys = [f"chunk {n}" for n in range(300)]
    before = {k: owner(k, REPLICAS) for k in keys}
    after = {k: owner(k, [*REPLICAS, "r-c"]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "r-c" for k in moved) and 60 <= len(moved) <= 140


def test_a_request_goes_to_the_replica_owning_most_of_its_chunks() -> None:
    chunks = [PromptChunk(f"passage {n}", "shared") for n in range(12)]
    keys = affinity_keys("generate", [[], None, "", chunks])
    assert len(keys) == 12
    owned = Counter(owner(k, REPLICAS) for k in keys)
    assert rank(keys, REPLICAS)[0] == owned.most_common(1)[0][0]
    # Without chunks: the prompt's opening is the key, so one conversation keeps to one replica.
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who?"}]
    assert affinity_keys("stream", [messages, None, ""]) == affinity_keys("stream", [messages, None, "", []])
    # Calls that carry no prompt have no affinity.
    assert affinity_keys("ready", []) == [] and affinity_keys("metrics_text", [True]) == []
