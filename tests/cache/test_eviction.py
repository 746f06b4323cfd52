"""The byte-bounded memory tier: LRU order, the cost-aware policy, bounds, concurrent use."""

from __future__ import annotations

import threading

import pytest

from cache.eviction import ByteBoundedCache


def test_lru_evicts_least_recently_used() -> None:
    c: ByteBoundedCache[str] = ByteBoundedCache(300, "lru")
    for k in "abc":
        assert c.put(k, k, 100, cost=1.0) == []
    assert c.get("a") == "a"  # b is now the oldest
    assert c.put("d", "d", 100, cost=1.0) == ["b"]
    assert c.put("e", "e", 100, cost=1.0) == ["c"]
    assert sorted(c.keys()) == ["a", "d", "e"]
    assert c.used_bytes == 300 and c.evictions == 2


def test_craft_keeps_costly_and_frequent_entries() -> None:
    c: ByteBoundedCache[str] = ByteBoundedCache(300, "craft")
    c.put("cheap", "x", 100, cost=0.01)
    c.put("costly", "x", 100, cost=1.0)
    c.put("hot", "x", 100, cost=0.1)
    for _ in range(20):
        c.get("hot")
    # LRU would evict "cheap"'s elder, here it is the lowest hits*cost/bytes that goes.
    assert c.put("new", "x", 100, cost=0.5) == ["cheap"]
    # "hot" (20 hits x 0.1) outranks "new" (1 x 0.5): the next victim is "new".
    assert c.put("newer", "x", 100, cost=0.6) == ["new"]
    assert set(c.keys()) == {"costly", "hot", "newer"}


def test_craft_ages_entries_that_stop_being_used() -> None:
    c: ByteBoundedCache[str] = ByteBoundedCache(200, "craft")
    c.put("old", "x", 100, cost=1.0)
    for _ in range(3):
        c.get("old")
    # Each eviction raises the clock to the victim's priority, so fresh entries catch up with an idle one.
    evicted = []
    for i in range(12):
        evicted += c.put(f"n{i}", "x", 100, cost=1.0)
    assert "old" in evicted


def test_bounds_and_oversized_entries() -> None:
    c: ByteBoundedCache[str] = ByteBoundedCache(250, "craft")
    assert c.put("big", "x", 251, cost=9.0) == ["big"]
    assert "big" not in c and c.used_bytes == 0
    c.put("a", "x", 100, cost=1.0)
    c.put("a", "y", 200, cost=1.0)  # replacing an entry re-counts its bytes
    assert c.used_bytes == 200 and c.get("a") == "y"
    assert c.remove("a") and not c.remove("a") and c.used_bytes == 0
    with pytest.raises(ValueError, match="eviction policy"):
        ByteBoundedCache(10, "lfu")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["lru", "craft"])
def test_concurrent_puts_and_gets_keep_the_bound(policy: str) -> None:
    c: ByteBoundedCache[int] = ByteBoundedCache(1000, policy)  # type: ignore[arg-type]

    def work(seed: int) -> None:
        for i in range(400):
            key = f"k{(seed * 7 + i) % 37}"
            if i % 3:
                c.get(key)
            else:
                c.put(key, i, 10 + (i % 5) * 20, cost=float(i % 7))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.used_bytes <= 1000
    assert c.used_bytes == sum(c._slots[k].nbytes for k in c.keys())
