from __future__ import annotations

import threading
import time

import pytest

from services.workers.engines.priority_lock import PriorityLock, current_priority, run_with_priority

pytestmark = pytest.mark.unit


def _contend(lock: PriorityLock, priorities: list[int]) -> list[int]:
    """Hold the lock, queue one waiter per priority (in list order), release: the order they got it."""
    order: list[int] = []
    lock.acquire()
    threads = []
    for p in priorities:
        t = threading.Thread(target=lambda p=p: run_with_priority(p, _take, lock, order, p))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # arrival order is the list's
    lock.release()
    for t in threads:
        t.join(5)
    return order


def _take(lock: PriorityLock, order: list[int], p: int) -> None:
    with lock:
        order.append(p)
        time.sleep(0.01)


def test_waiters_get_the_lock_by_priority_then_arrival() -> None:
    assert _contend(PriorityLock(), [1, 3, 2, 3, 0]) == [3, 3, 2, 1, 0]
    lock = PriorityLock()
    order: list[int] = []
    lock.acquire()
    seen: list[str] = []
    same = [threading.Thread(target=lambda n=n: (_take(lock, order, 5), seen.append(n))) for n in "abc"]
    for t in same:
        t.start()
        time.sleep(0.05)
    lock.release()
    for t in same:
        t.join(5)
    assert seen == ["a", "b", "c"]  # FIFO within a priority (all default 0 here, as with threading.Lock)


def test_timeout_and_misuse() -> None:
    lock = PriorityLock()
    assert lock.acquire(timeout=1)
    started = time.monotonic()
    assert not lock.acquire(timeout=0.1)
    assert time.monotonic() - started >= 0.09
    lock.release()
    assert not lock.locked() and lock.acquire(timeout=0.1)  # a timed-out waiter left no trace
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
        take = lambda: (lock.acquire(), got.append(time.monotonic()))  # noqa: E731
        t = threading.Thread(target=lambda: run_with_priority(1, take))
        started = time.monotonic()
        t.start()
        time.sleep(0.05)
        assert not got  # the low waiter holds off
        lock.acquire(3)  # the high one comes back and gets it first
        lock.release()
        t.join(1)
    assert got and got[0] - started >= 0.2  # it went only after the grace since the last high step
    lock.release()
    # Once the higher request is done (not active), lower ones do not wait.
    lock.acquire(3)
    lock.release()
    started = time.monotonic()
    assert lock.acquire(1, timeout=1) and time.monotonic() - started < 0.1
    lock.release()
