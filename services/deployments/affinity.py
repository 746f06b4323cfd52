"""Cache-affine routing to worker replicas: a Serve request router (Ray Serve's custom request router API) that
sends a request to the replica most likely to hold its chunks' KV (Cache-Craft's chunk cache) or its prompt
prefix (vLLM's prefix cache), and to the least loaded replica when that one is busy.

Each chunk has an owner among the live replicas by rendezvous (highest-random-weight) hashing of the chunk's
text against each replica's id; a request goes to the replica that owns most of its chunks. A request without
chunks (the no-retrieval policy, DRAGIN's signal pass) is keyed by its system prompt and first user message.
Rendezvous hashing needs no shared state: every gateway replica's router picks the same owner, and a replica
that joins or leaves moves only the chunks it owned. Serve's PrefixCacheAffinityRouter (ray.serve.llm) keeps a
prefix tree in an actor instead, fed from the routed prompts: it fits vLLM's prefix cache, while chunk reuse here
is per chunk, in any order, which a prefix tree of whole prompts does not see.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

# Worker methods whose calls carry (messages, params, assistant_prefix, chunks) positionally.
ROUTED_METHODS = frozenset({"generate", "stream", "generate_with_signals"})
# Characters of the prompt that key a request without chunks.
PREFIX_CHARS = 2048


def _weight(key: str, replica: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest(), "big")


def owner(key: str, replicas: Sequence[str]) -> str:
    """The replica that owns ``key`` (rendezvous hashing)."""
    return max(replicas, key=lambda r: _weight(key, r))


def _text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
    return content if isinstance(content, str) else str(content or "")


def affinity_keys(method: str, args: Sequence[Any]) -> list[str]:
    """What a worker call's cache reuse depends on: its chunks' texts, else its prompt's opening."""
    if method not in ROUTED_METHODS or not args:
        return []
    chunks = args[3] if len(args) > 3 else None
    if chunks:
        return [hashlib.blake2b(c.text.encode(), digest_size=16).hexdigest() for c in chunks]
    messages = args[0] or []
    opening = "".join(_text(m) for m in messages[:2])[:PREFIX_CHARS]
    return [hashlib.blake2b(opening.encode(), digest_size=16).hexdigest()] if opening else []


def rank(keys: list[str], replicas: Sequence[str]) -> list[str]:
    """Replicas by how many of the keys they own, the first key's owner first among equals."""
    owned = Counter(owner(k, replicas) for k in keys)
    return sorted(replicas, key=lambda r: (-owned[r], -_weight(keys[0], r)))


class ChunkAffinityRouter(FIFOMixin, RequestRouter):
    """Rendezvous-hash affinity with a load guard: when the preferred replica has ``imbalance`` more requests
    in flight than the least loaded one, the request goes by load instead (Serve's queue lengths)."""

    def initialize_state(self, imbalance: int = 4, **kwargs: Any) -> None:
        self.imbalance = imbalance

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        keys = affinity_keys(pending_request.metadata.call_method, pending_request.args) if pending_request else []
        if not keys:
            shuffled = random.sample(candidate_replicas, len(candidate_replicas))
            return [shuffled[:2], shuffled[2:]] if len(shuffled) > 2 else [shuffled]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        ordered = [by_id[i] for i in rank(keys, list(by_id))]
        queue = {r.replica_id.unique_id: self._replica_queue_len_cache.get(r.replica_id) for r in ordered}
        known = [q for q in queue.values() if q is not None]
        first = queue[ordered[0].replica_id.unique_id]
        if first is not None and known and first - min(known) >= self.imbalance:
            ordered.sort(key=lambda r: queue[r.replica_id.unique_id] or 0)
        # One rank per replica: Serve tries the preferred one, and the next when it is full.
        return [[r] for r in ordered]
