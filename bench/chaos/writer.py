"""A store writer to kill -9: ``python -m bench.chaos.writer DIR PREFIX`` opens the FAISS store
in DIR (taking its writer lock), then adds one document after another, each in a transaction with its
save, and prints ``ack <id>`` once that save returned. Whatever it printed must still be in the store
after any kill (`kill_writers`). Vectors are random: what is tested is the store's durability."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DIM = 8
EMBEDDER = "chaos-random"


def main(directory: str, prefix: str) -> None:
    import numpy as np

    from retrieval.documents import Document
    from retrieval.store import VectorStore

    store = VectorStore.open(DIM, EMBEDDER, directory, lock_timeout_s=30)
    rng = np.random.default_rng()
    for i in range(1_000_000):
        doc = Document(id=f"{prefix}-{i}", title=prefix, text=f"document {i} of writer {prefix}")
        with store.transaction():
            store.upsert(doc, [(0, doc.text)], rng.standard_normal((1, DIM)).astype(np.float32))
            store.save()
        print(f"ack {doc.id}", flush=True)


def kill_writers(directory: Path, kills: int, *, seed: int = 0, max_life_s: float = 1.5) -> dict[str, Any]:
    """Start a writer, kill -9 it at a random moment, ``kills`` times over; then open the store and count the
    acknowledged documents it lost (the goal is none)."""
    from retrieval.documents import SHARED_NAMESPACE
    from retrieval.store import VectorStore

    rng = random.Random(seed)
    acked: list[str] = []
    started = time.perf_counter()
    for n in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.chaos.writer", str(directory), f"k{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # Most kills land after the imports, while documents are being written and saved.
        time.sleep(rng.uniform(0.3, max_life_s))
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        acked += [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("ack ")]
    store = VectorStore.open(DIM, EMBEDDER, directory, lock_timeout_s=30)
    try:
        lost = [d for d in acked if (SHARED_NAMESPACE, d) not in store.docs]
        consistent = store.index.ntotal == len(store.chunks)
    finally:
        store.close()
    return {
        "kills": kills,
        "acknowledged": len(acked),
        "lost": len(lost),
        "lost_ids": lost[:10],
        "index_consistent": consistent,
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
