"""The background queue of the llama.cpp chunk cache: chunk token ids waiting for their state to be computed
ahead of the first question about them (ingested documents, the stored corpus at start, chunks a prompt had to
compute in place), one thread per engine below every SLA tier's priority, with the progress `/readyz` and
`/metrics` show. What computing one chunk means is the caller's (``work``); this module only orders, dedups,
bounds and counts."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cache.chunk_kv import REGISTRY
from core.metrics import counter, gauge
from services.workers.engines.priority_lock import run_with_priority

logger = logging.getLogger(__name__)

PRECOMPUTED = counter(
    "ragyard_chunk_kv_precompute_total",
    "Chunks handed to the background KV computation, by model and outcome (computed, present, over_budget, failed).",
    ["model", "result"],
    registry=REGISTRY,
)
PENDING = gauge(
    "ragyard_chunk_kv_precompute_pending", "Chunks waiting for their KV to be computed.", ["model"], registry=REGISTRY
)

# Background work runs below every SLA tier (their priorities are 0..100).
BACKGROUND_PRIORITY = -1
MAX_PENDING = 100_000
OUTCOMES = ("computed", "present", "over_budget", "failed")


class BackgroundChunks:
    """A deduplicating FIFO of chunks (each its entry's key and its token ids) and the thread that drains it
    through ``work(key, ids) -> outcome``."""

    def __init__(self, model_id: str, work: Callable[[str, list[int]], str]) -> None:
        self.model_id = model_id
        self._work = work
        self._queue: collections.deque[tuple[str, list[int]]] = collections.deque()
        self._queued_keys: set[str] = set()
        self._cond = threading.Condition()
        self.stopping = False
        self.progress = {"queued": 0, **dict.fromkeys(OUTCOMES, 0)}
        self._thread = threading.Thread(target=self._run, name=f"chunk-kv-{model_id}", daemon=True)
        self._thread.start()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def add(self, items: list[tuple[str, list[int]]]) -> int:
        """Queue chunks (key, token ids) not queued already (up to MAX_PENDING); returns how many were added."""
        added = 0
        with self._cond:
            for key, cid in items:
                if key in self._queued_keys or len(self._queue) >= MAX_PENDING:
                    continue
                self._queued_keys.add(key)
                self._queue.append((key, cid))
                added += 1
            self.progress["queued"] += added
            PENDING.labels(self.model_id).set(len(self._queue))
            self._cond.notify()
        return added

    def _run(self) -> None:
        run_with_priority(BACKGROUND_PRIORITY, self._loop)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self.stopping:
                    self._cond.wait()
                if self.stopping:
                    return
                key, cid = self._queue.popleft()
                PENDING.labels(self.model_id).set(len(self._queue))
            try:
                result = self._work(key, cid)
            except Exception:  # noqa: BLE001 - one chunk's failure must not stop the rest
                logger.exception("background chunk KV failed")
                result = "failed"
            finally:
                with self._cond:
                    self._queued_keys.discard(key)
            self.progress[result] += 1
            PRECOMPUTED.labels(self.model_id, result).inc()

    def wait_idle(self, timeout: float) -> bool:
        """Block until the queue is empty and nothing is being computed (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue and not self._queued_keys:
                    return True
            time.sleep(0.05)
        return False

    def describe(self) -> dict[str, Any]:
        return {"pending": self.pending(), **self.progress}

    def close(self) -> None:
        with self._cond:
            self.stopping = True
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)
