"""The priority lock's order, timeouts and grace. Threads are ordered by waiting until the lock counts
each one as a waiter (no sleeps decide the order), and no test asserts how fast anything is."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from services.workers.engines.priority_lock import PriorityLock, current_priority, run_with_priority

pytestmark = pytest.mark.unit


def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``condition`` holds; fails the test if it never does."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the threads to queue"
        pause.wait(0.001)


def _queue(lock: PriorityLock, targets: list[Callable[[], object]]) -> list[threading.Thread]:
    """Start one thread per target, each only once the one before is waiting on the lock."""
    threads = []
    for n, target in enumerate(targets, start=1):
        t = threading.Thread(target=target)
        t.start()
        threads.append(t)
        _until(lambda n=n: lock.waiting() == n)  # type: ignore[misc]
    return threads


def _contend(lock: PriorityLock, priorities: list[int]) -> list[int]:
    """Hold the lock, queue one waiter per priority (in list order), release: the order they got it."""
    order: list[int] = []
    lock.acquire()
    threads = _queue(lock, [lambda p=p: run_with_priority(p, _take, lock, order, p) for p in priorities])  # type: ignore[misc]
    lock.release()
    for t in threads:
        t.join(5)
    return order


def _take(lock: PriorityLock, order: list[int], p: int) -> None:
    with lock:
        order.append(p)


def test_waiters_get_the_lock_by_priority_then_arrival() -> None:
    assert _contend(PriorityLock(), [1, 3, 2, 3, 0]) == [3, 3, 2, 1, 0]
    lock = PriorityLock()
    order: list[int] = []
    lock.acquire()
    seen: list[str] = []

    def take_and_say(name: str) -> None:
        _take(lock, order, 5)
        seen.append(name)

    threads = _queue(lock, [lambda n=n: take_and_say(n) for n in "abc"])  # type: ignore[misc]
    lock.release()
    for t in threads:
        t.join(5)
    assert seen == ["a", "b", "c"]  # FIFO within a priority (all default 0 here, as with threading.Lock)


def test_timeout_and_misuse() -> None:
    lock = PriorityLock()
    assert lock.acquire(timeout=1)
    started = time.monotonic()
    assert not lock.acquire(timeout=0.1)
    assert time.monotonic() - started >= 0.09  # it waited its timeout (a lower bound: never flaky)
    lock.release()
    assert not lock.locked() and lock.waiting() == 0 and lock.acquire(timeout=0)  # the timed-out waiter left no trace
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    assert current_priority() == 0 and run_with_priority(7, current_priority) == 7 and current_priority() == 0


def test_an_active_higher_request_keeps_the_lock_between_its_steps() -> None:
    lock = PriorityLock(grace=0.2)
    got: list[float] = []
    with lock.active(3):
        lock.acquire(3)
        lock.release()  # the high request is between two steps

        def take() -> None:
            lock.acquire()
            got.append(time.monotonic())

        t = threading.Thread(target=lambda: run_with_priority(1, take))
        t.start()
        _until(lambda: lock.waiting() == 1)
        assert not got  # the low waiter is parked, holding off
        lock.acquire(3)  # the high one comes back and gets it first
        released = time.monotonic()  # at or before the release the grace counts from
        lock.release()
        t.join(5)
    assert got and got[0] - released >= 0.2  # it went only after the grace since the last high step
    lock.release()
    # Once the higher request is done (not active), a lower one does not wait at all.
    lock.acquire(3)
    lock.release()
    assert lock.acquire(1, timeout=0)
    lock.release()
