"""A byte-bounded in-memory tier with two eviction policies: LRU, and Cache-Craft's cost-aware one.

``craft`` keeps the entries whose loss would cost the most recompute per byte held, weighted by how often
they are reused, and ages them so that recency still counts: the GreedyDual-Size-Frequency rule,
``priority = clock + hits * recompute_cost / bytes``, where ``clock`` rises to the priority of each
evicted entry (an entry not touched for a while falls below newer ones). ``lru`` evicts the least
recently used entry. Each policy is a small class behind `Eviction`. cachetools has LRU and LFU but nothing
weighing cost, size and frequency together, hence these classes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

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


class Eviction(Protocol):
    """The rule that picks what a full `ByteBoundedCache` lets go (LMCache's ``cache_policy`` is the model): told
    of every entry stored or read, it names the next victim among the entries held."""

    def touched(self, key: str, slot: _Slot[Any], slots: OrderedDict[str, _Slot[Any]]) -> None: ...

    def victim(self, slots: OrderedDict[str, _Slot[Any]]) -> str: ...

    def clear(self) -> None: ...


class LruEviction:
    """The least recently used entry goes first (the cache keeps its entries in order of use)."""

    def touched(self, key: str, slot: _Slot[Any], slots: OrderedDict[str, _Slot[Any]]) -> None:
        return None

    def victim(self, slots: OrderedDict[str, _Slot[Any]]) -> str:
        return next(iter(slots))

    def clear(self) -> None:
        return None


class CraftEviction:
    """Cache-Craft's cost-aware rule (GreedyDual-Size-Frequency): the entry with the lowest
    ``clock + hits * recompute_cost / bytes`` goes first; the clock rises to each victim's priority, so an entry
    not touched for a while falls below newer ones. A lazy min-heap; stale versions are skipped on pop."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._clock = 0.0
        self._versions = itertools.count()

    def touched(self, key: str, slot: _Slot[Any], slots: OrderedDict[str, _Slot[Any]]) -> None:
        slot.priority = self._clock + slot.hits * slot.cost / max(1, slot.nbytes)
        slot.version = next(self._versions)
        heapq.heappush(self._heap, (slot.priority, slot.version, key))
        if len(self._heap) > 4 * len(slots) + 64:  # mostly stale: rebuilt from the live entries
            self._heap = [(s.priority, s.version, k) for k, s in slots.items()]
            heapq.heapify(self._heap)

    def victim(self, slots: OrderedDict[str, _Slot[Any]]) -> str:
        while True:
            priority, version, key = heapq.heappop(self._heap)
            slot = slots.get(key)
            if slot is not None and slot.version == version:
                self._clock = priority
                return key

    def clear(self) -> None:
        self._heap.clear()


EVICTIONS: dict[str, type[LruEviction] | type[CraftEviction]] = {"craft": CraftEviction, "lru": LruEviction}


class ByteBoundedCache(Generic[V]):
    """Thread-safe map bounded by the bytes its values declare; ``put`` returns the evicted keys."""

    def __init__(self, capacity_bytes: int, policy: EvictionPolicy = "craft") -> None:
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        if policy not in ("craft", "lru"):
            raise ValueError(f"unknown eviction policy {policy!r}; valid: craft, lru")
        self.capacity = capacity_bytes
        self.policy: EvictionPolicy = policy
        self._eviction: Eviction = EVICTIONS[policy]()
        self._slots: OrderedDict[str, _Slot[V]] = OrderedDict()
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

    def _touch(self, key: str, slot: _Slot[V]) -> None:
        self._slots.move_to_end(key)
        self._eviction.touched(key, slot, self._slots)

    def get(self, key: str) -> V | None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return None
            slot.hits += 1
            self._touch(key, slot)
            return slot.value

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
                victim = self._eviction.victim(self._slots)
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
            self._eviction.clear()
            self._used = 0

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._slots)
