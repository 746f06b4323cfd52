"""`ragyard bench tenancy`: what filtering search by namespace costs, two ways, at several corpus sizes.

- **selector** (what `VectorStore` does): one flat index over every chunk; a tenant's search passes FAISS
  an id bitmap of the chunks it may read (its own and the shared namespace), so only those are scored.
- **per-namespace**: one flat index per namespace; a tenant's search runs on its own index and on the
  shared one, and the two top-k lists are merged.
- **unfiltered** (the baseline, what a single-tenant store does): one flat index, no filter.

Vectors are random unit vectors of the embedder's size (a flat index's search time does not depend on
what the vectors say); half the chunks are shared and the rest split evenly over the tenants. Each
setup answers the same queries, interleaved, and the medians are compared side by side.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import percentile
from retrieval.documents import SHARED_NAMESPACE, Document
from retrieval.store import VectorStore

DIM = 384


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _build(size: int, tenants: int, seed: int) -> tuple[VectorStore, dict[str, Any], list[str]]:
    """The store (one index, namespaces on its chunks) and, for the same vectors, one index per namespace."""
    import faiss

    rng = np.random.default_rng(seed)
    names = [f"tenant-{t:02d}" for t in range(tenants)]
    owners = np.where(np.arange(size) % 2 == 0, -1, (np.arange(size) // 2) % tenants)
    vectors = _unit(rng, size)
    store = VectorStore(DIM, "bench")
    per_ns: dict[str, Any] = {}
    per_chunk = 50  # chunks per document
    for start in range(0, size, per_chunk):
        for ns_code in np.unique(owners[start : start + per_chunk]):
            rows = np.nonzero(owners[start : start + per_chunk] == ns_code)[0] + start
            ns = SHARED_NAMESPACE if ns_code < 0 else names[int(ns_code)]
            doc = Document(id=f"{ns}-{start}", text=f"doc {start}", namespace=ns)
            store.upsert(doc, [(int(r), "") for r in rows], vectors[rows])
            index = per_ns.setdefault(ns, faiss.IndexIDMap2(faiss.IndexFlatIP(DIM)))
            # the store's chunk ids, so both designs name a hit the same way
            index.add_with_ids(
                vectors[rows], np.asarray(store.docs[(doc.namespace, doc.id)]["chunk_ids"], dtype=np.int64)
            )
    return store, per_ns, names


def _per_namespace_search(per_ns: dict[str, Any], query: np.ndarray, k: int, readable: list[str]) -> list[int]:
    hits: list[tuple[float, int]] = []
    for ns in readable:
        scores, ids = per_ns[ns].search(query, k)
        hits += [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
    return [i for _, i in sorted(hits, reverse=True)[:k]]


def bench_tenancy(
    out: str | Path, *, sizes: tuple[int, ...] = (10_000, 100_000), tenants: int = 20, queries: int = 200, k: int = 4
) -> str:
    import faiss

    rows: list[dict[str, Any]] = []
    for size in sizes:
        store, per_ns, names = _build(size, tenants, seed=size)
        rng = np.random.default_rng(size + 1)
        qs = _unit(rng, queries)
        times: dict[str, list[float]] = {"unfiltered": [], "selector": [], "per-namespace": []}
        agree = 0
        for n in range(queries):
            q = qs[n : n + 1]
            tenant = names[n % tenants]
            readable = [tenant, SHARED_NAMESPACE]
            for setup in ("unfiltered", "selector", "per-namespace"):
                start = time.perf_counter()
                if setup == "unfiltered":
                    store.search(q, k)
                elif setup == "selector":
                    got = [p.chunk.chunk_id for p in store.search(q, k, readable)[0]]
                else:
                    ref = _per_namespace_search(per_ns, q, k, readable)
                times[setup].append(time.perf_counter() - start)
            agree += got == ref  # both designs must return the same chunks
        med = {s: statistics.median(t) * 1000 for s, t in times.items()}
        rows.append(
            {
                "chunks": size,
                "tenants": tenants,
                "readable_chunks_per_query": size // 2 + size // (2 * tenants),
                "queries": queries,
                "k": k,
                "same_results": agree,
                "ms": {
                    s: {"p50": round(med[s], 4), "p95": round(percentile(t, 0.95) * 1000, 4)} for s, t in times.items()
                },
                "selector_vs_per_namespace": round(med["selector"] / med["per-namespace"], 3),
                "selector_vs_unfiltered": round(med["selector"] / med["unfiltered"], 3),
            }
        )
    result = {
        "rows": rows,
        "machine": {
            "cpus": os.cpu_count() or 0,
            "faiss_threads": faiss.omp_get_max_threads(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
        },
        "note": "medians of interleaved runs; vectors random, half shared, the rest split over the tenants",
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tenancy.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = (
        "| chunks | unfiltered p50 ms | selector p50 ms | per-namespace p50 ms | selector / per-namespace "
        "| same results |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    for r in rows:
        ms = r["ms"]
        table += (
            f"| {r['chunks']:,} | {ms['unfiltered']['p50']} | {ms['selector']['p50']} | {ms['per-namespace']['p50']} "
            f"| {r['selector_vs_per_namespace']} | {r['same_results']}/{r['queries']} |\n"
        )
    (out_dir / "tenancy.md").write_text(table, encoding="utf-8")
    return table
