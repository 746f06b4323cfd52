"""`ragyard eval`: answer every question of a QA file with one policy and score it.

The retrieval corpus is the union of all the file's contexts (deduplicated by title and text), indexed
once and reused by content hash. The response cache is off: every question is really answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from core.scoring import score
from retrieval.documents import Document
from retrieval.ingest import parse_jsonl
from retrieval.policies.base import Question
from services.config import AppConfig
from services.deployments.retriever import RetrieverService
from services.pipeline import AnswerRequest, RagService
from services.pipeline.clients import WorkerClient, local_retriever, local_worker

logger = logging.getLogger(__name__)


def read_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("question", "answers"):
                if key not in row:
                    raise ValueError(f"{path}:{lineno}: missing {key!r}")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def corpus_of(path: str | Path) -> list[Document]:
    """Every context of the whole file (not only the rows evaluated), once each; none for a file whose
    rows ship without passages (FanOutQA: only ``none`` can answer those)."""
    if not any(r.get("contexts") for r in read_rows(path)):
        return []
    return parse_jsonl(Path(path).read_text(encoding="utf-8"), source=Path(path).name)


def index_dir_for(config: AppConfig, docs: list[Document]) -> Path:
    h = hashlib.sha256()
    for doc in sorted(docs, key=lambda d: d.id):
        h.update(doc.fingerprint.encode())
    h.update(json.dumps([config.embedder.path, config.index.chunk_tokens, config.index.chunk_overlap_tokens]).encode())
    return Path(config.cache_dir).expanduser() / "eval-index" / h.hexdigest()[:20]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Evaluator:
    """Holds the models and embedder so several files and policies share one load.

    ``models``: the model ids its services answer with (default: the config's first model); ``worker``
    is the first one's, when the caller has loaded it already.
    """

    def __init__(
        self, config: AppConfig, worker: Any = None, embedder: Any = None, *, models: list[str] | None = None
    ) -> None:
        from retrieval.embedder import Embedder
        from services.deployments.worker import Worker

        self.config = config
        ids = models or [config.default_model.id]
        for mid in ids:
            config.model(mid)  # KeyError for an unknown id, before anything loads
        self.worker = worker or Worker(config, ids[0])
        self.workers: dict[str, Any] = {ids[0]: self.worker}
        for mid in ids[1:]:
            self.workers[mid] = Worker(config, mid)
        self.embedder = embedder or Embedder(config.embedder.path, device=config.embedder.device)

    def service_for(self, data: str | Path) -> RagService:
        from retrieval.retriever import Retriever

        docs = corpus_of(data)
        idx_dir = index_dir_for(self.config, docs)
        retriever = Retriever.create(
            index_dir=idx_dir,
            chunk_tokens=self.config.index.chunk_tokens,
            chunk_overlap_tokens=self.config.index.chunk_overlap_tokens,
            embedder=self.embedder,
        )
        started = time.perf_counter()
        report = retriever.ingest(docs)
        logger.info(
            "eval index %s: %d added, %d unchanged in %.1fs",
            idx_dir,
            len(report.added),
            len(report.unchanged),
            time.perf_counter() - started,
        )
        cfg = self.config.model_copy(
            update={"corpus": self.config.corpus.model_copy(update={"ingest_on_start": False})}
        )
        svc = RetrieverService(cfg, retriever=retriever)
        workers: dict[str, WorkerClient] = {mid: local_worker(w) for mid, w in self.workers.items()}
        return RagService(cfg, local_retriever(svc), workers, cache=None)

    def run(
        self,
        data: str | Path,
        policy: str,
        *,
        limit: int | None = None,
        max_tokens: int = 32,
        top_k: int | None = None,
        progress: bool = False,
        rows: list[dict[str, Any]] | None = None,
        service: RagService | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Answer and score ``rows`` (default: the file's, up to ``limit``) against the file's corpus."""
        rows = rows if rows is not None else read_rows(data, limit)
        service = service or self.service_for(data)
        return asyncio.run(self._run(service, rows, policy, max_tokens, top_k, progress, str(data)))

    async def _run(
        self,
        service: RagService,
        rows: list[dict[str, Any]],
        policy: str,
        max_tokens: int,
        top_k: int | None,
        progress: bool,
        data: str,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        predictions: list[dict[str, Any]] = []
        for n, row in enumerate(rows, start=1):
            predictions.append(await self.answer_row(service, row, policy, max_tokens=max_tokens, top_k=top_k, n=n))
            if progress and (n % 25 == 0 or n == len(rows)):
                done = predictions
                print(
                    f"  {policy} {Path(data).name}: {n}/{len(rows)} "  # noqa: T201
                    f"em={statistics.fmean(p['em'] for p in done):.3f} "
                    f"f1={statistics.fmean(p['f1'] for p in done):.3f}",
                    flush=True,
                )
        return summarise(predictions, policy=policy, data=data), predictions

    async def answer_row(
        self,
        service: RagService,
        row: dict[str, Any],
        policy: str,
        *,
        max_tokens: int = 32,
        top_k: int | None = None,
        n: int = 0,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Answer one QA row with one policy and score it: the prediction record the outputs hold."""
        started = time.perf_counter()
        record = await service.answer(
            AnswerRequest(
                question=Question(text=row["question"], style="short"),
                model=model or next(iter(self.workers)),
                policy=policy,
                top_k=top_k,
                max_tokens=max_tokens,
                stop=("\n",),
            )
        )
        latency = time.perf_counter() - started
        em, f, scored = score(record.answer, row["answers"])
        return {
            "id": row.get("id", str(n)),
            "question": row["question"],
            "answers": row["answers"],
            "prediction": record.answer,
            "scored_as": scored,
            "em": em,
            "f1": round(f, 4),
            "hops": row.get("hops"),
            "model": record.model,
            "latency_s": round(latency, 4),
            "retrieval_steps": record.retrieval_steps,
            "llm_calls": record.llm_calls,
            "prompt_tokens": record.usage.prompt_tokens,
            "completion_tokens": record.usage.completion_tokens,
            "citations": [{"title": c.title, "score": c.score} for c in record.citations],
            "timings": record.timings,
            "plan": record.plan.model_dump(mode="json"),
        }


def summarise(predictions: list[dict[str, Any]], *, policy: str, data: str) -> dict[str, Any]:
    lat = [p["latency_s"] for p in predictions]

    def mean(key: str) -> float:
        return round(statistics.fmean(p[key] for p in predictions), 4) if predictions else 0.0

    return {
        "data": data,
        "policy": policy,
        "n": len(predictions),
        "em": mean("em"),
        "f1": mean("f1"),
        "mean_latency_s": round(statistics.fmean(lat), 4) if lat else 0.0,
        "p50_latency_s": round(percentile(lat, 0.5), 4),
        "p95_latency_s": round(percentile(lat, 0.95), 4),
        "retrieval_steps_mean": mean("retrieval_steps"),
        "llm_calls_mean": mean("llm_calls"),
        "prompt_tokens_mean": mean("prompt_tokens"),
        "completion_tokens_mean": mean("completion_tokens"),
    }


def write_outputs(out: str | Path, metrics: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for p in predictions:
            fh.write(json.dumps(p) + "\n")
