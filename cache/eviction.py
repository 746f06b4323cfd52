"""A byte-bounded in-memory tier with two eviction policies: LRU, and Cache-Craft's cost-aware one.

``craft`` keeps the entries whose loss would cost the most recompute per byte held, weighted by how often
they are reused, and ages them so that recency still counts: the GreedyDual-Size-Frequency rule,
``priority = clock + hits * recompute_cost / bytes``, where ``clock`` rises to the priority of each
evicted entry (an entry not touched for a while falls below newer ones). ``lru`` evicts the least
recently used entry. cachetools has LRU and LFU but nothing weighing cost, size and frequency together,
hence this class.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

V = TypeVar("V")

EvictionPolicy = Literal["craft", "lru"]


@dataclass
class _Slot(Generic[V]):
    value: V
    nbytes: int
    cost: float
    hits: int
    priority: float
    version: int


class ByteBoundedCache(Generic[V]):
    """Thread-safe map bounded by the bytes its values declare; ``put`` returns the evicted keys."""

    def __init__(self, capacity_bytes: int, policy: EvictionPolicy = "craft") -> None:
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        if policy not in ("craft", "lru"):
            raise ValueError(f"unknown eviction policy {policy!r}; valid: craft, lru")
        self.capacity = capacity_bytes
        self.policy: EvictionPolicy = policy
        self._slots: OrderedDict[str, _Slot[V]] = OrderedDict()
        # craft: a lazy min-heap of (priority, version, key); stale versions are skipped on pop.
        self._heap: list[tuple[float, int, str]] = []
        self._clock = 0.0
        self._versions = itertools.count()
        self._used = 0
        self._lock = threading.Lock()
        self.evictions = 0

    @property
    def used_bytes(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: str) -> bool:
        return key in self._slots

    def _score(self, slot: _Slot[V]) -> float:
        return self._clock + slot.hits * slot.cost / max(1, slot.nbytes)

    def _touch(self, key: str, slot: _Slot[V]) -> None:
        self._slots.move_to_end(key)
        if self.policy == "craft":
            slot.priority = self._score(slot)
            slot.version = next(self._versions)
            heapq.heappush(self._heap, (slot.priority, slot.version, key))
            if len(self._heap) > 4 * len(self._slots) + 64:
                self._heap = [(s.priority, s.version, k) for k, s in self._slots.items()]
                heapq.heapify(self._heap)

    def get(self, key: str) -> V | None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return None
            slot.hits += 1
            self._touch(key, slot)
            return slot.value

    def _victim(self) -> str:
        if self.policy == "lru":
            return next(iter(self._slots))
        while True:
            priority, version, key = heapq.heappop(self._heap)
            slot = self._slots.get(key)
            if slot is not None and slot.version == version:
                self._clock = priority
                return key

    def put(self, key: str, value: V, nbytes: int, cost: float) -> list[str]:
        """Store ``value``; an entry larger than the whole capacity is not kept (returned as evicted)."""
        with self._lock:
            old = self._slots.pop(key, None)
            hits = 1
            if old is not None:
                self._used -= old.nbytes
                hits = old.hits
            if nbytes > self.capacity:
                return [key]
            slot = _Slot(value, nbytes, max(cost, 0.0), hits, 0.0, 0)
            self._slots[key] = slot
            self._used += nbytes
            self._touch(key, slot)
            evicted: list[str] = []
            while self._used > self.capacity:
                victim = self._victim()
                gone = self._slots.pop(victim)
                self._used -= gone.nbytes
                evicted.append(victim)
            self.evictions += len(evicted)
            return evicted

    def remove(self, key: str) -> bool:
        with self._lock:
            slot = self._slots.pop(key, None)
            if slot is None:
                return False
            self._used -= slot.nbytes
            return True

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self._heap.clear()
            self._used = 0

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._slots)
