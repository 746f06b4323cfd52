"""A mutex that serves its waiters by request priority: the torch engine's one-forward-at-a-time lock.

Concurrent requests interleave on one model step by step. With plain ``threading.Lock`` the next step
goes to whichever thread the OS wakes; here it goes to the waiting request of the highest priority (the
SLA tier's), then to the one that has waited longest, so an interactive request is not slowed by batch
work that arrived before it. A stream is between two of its steps for a moment after each one (its
chunk goes out before it asks again), so a request of higher priority that is *active* (registered with
:meth:`PriorityLock.active`) and released the lock less than ``grace`` ago keeps it from lower waiters:
they take a step only when it is done, or stalls (a slow reader) for longer than ``grace``.
Hand-written: neither the standard library nor a maintained package offers a priority-ordered thread lock.

The priority of a thread's acquisitions is set around each unit of work by :func:`run_with_priority` (the
engine's steps run on pool threads, one step at a time, so a thread-local set for the call is exact).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_local = threading.local()


def current_priority() -> int:
    return int(getattr(_local, "priority", 0))


def run_with_priority(priority: int, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` with this thread's lock priority set to ``priority``."""
    previous = getattr(_local, "priority", 0)
    _local.priority = priority
    try:
        return fn(*args)
    finally:
        _local.priority = previous


class PriorityLock:
    """Non-reentrant lock; waiters acquire highest priority first, FIFO within a priority."""

    def __init__(self, grace: float = 0.05) -> None:
        self.grace = grace
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._holder = 0
        self._waiting: list[tuple[int, int]] = []  # heap of (-priority, arrival)
        self._arrivals = itertools.count()
        self._active: Counter[int] = Counter()
        self._released_at: dict[int, float] = {}

    @contextmanager
    def active(self, priority: int) -> Iterator[None]:
        """Mark a request of ``priority`` as running (between its steps it keeps its precedence)."""
        with self._cond:
            self._active[priority] += 1
        try:
            yield
        finally:
            with self._cond:
                self._active[priority] -= 1
                if self._active[priority] <= 0:
                    del self._active[priority]
                self._cond.notify_all()

    def _hold_off(self, priority: int, now: float) -> float:
        latest = max((self._released_at.get(q, -math.inf) for q in self._active if q > priority), default=-math.inf)
        return latest + self.grace - now

    def acquire(self, priority: int | None = None, timeout: float | None = None) -> bool:
        p = current_priority() if priority is None else priority
        entry = (-p, next(self._arrivals))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            heapq.heappush(self._waiting, entry)
            while True:
                now = time.monotonic()
                pause: float | None = None
                if not self._held and self._waiting[0] == entry:
                    pause = self._hold_off(p, now)
                    if pause <= 0:
                        break
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    self._waiting.remove(entry)
                    heapq.heapify(self._waiting)
                    self._cond.notify_all()  # the head may have changed
                    return False
                waits = [w for w in (pause, left) if w is not None]
                self._cond.wait(min(waits) if waits else None)
            heapq.heappop(self._waiting)
            self._held = True
            self._holder = p
            return True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unlocked PriorityLock")
            self._held = False
            self._released_at[self._holder] = time.monotonic()
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    def waiting(self) -> int:
        """Threads blocked in `acquire` now (each is parked on the condition once it is counted here)."""
        with self._cond:
            return len(self._waiting)

    def __enter__(self) -> PriorityLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
