"""`ragyard collect-ladder`: answer training questions with every (model, policy) of the ladder, so the
router learns from measured quality: Adaptive-RAG's labels with the ladder (the simplest policy, and the
cheapest model, that answers correctly) and the model × policy × class quality table.

Every answer is one line of ``OUT/runs.jsonl`` keyed by (file, id, model, policy): a rerun, in this
session or a later one, skips what is there and goes on. Questions are taken round robin across the
files, so a partial run covers every file. `ragyard build-quality` turns the runs into the artifact.

Two modes. ``full`` answers every question with every (model, policy): what the quality table needs.
``cascade`` only finds the label: it tries the pairs simplest policy first and, within a policy, cheapest
model first (the config's order), and stops at the first correct answer; a one-hop question stops
after ``single`` (in the full runs not one of 36 one-hop questions needed ``multi`` to be answered: its
label is B either way, and ``multi`` is the costliest run, about 30 s a question for the two models
here); a question without passages (FanOutQA) can only be tried without retrieval. The table is built
from full-matrix runs only, since a cascade's later runs are of the questions the early ones missed;
``policies`` narrows a full run to some policies (``none`` and ``single`` cost about 6 s a question for
the two models here, ``multi`` 30 s), and the table takes each policy's cells from the questions every
model answered with it in full mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.harness import Evaluator, read_rows
from retrieval.policies.registry import label_ladder
from router.labels import split_rows
from router.quality import LadderRun, is_correct
from services.config import AppConfig
from services.pipeline import RagService

logger = logging.getLogger(__name__)

# The policies labels try, simplest first (none → A, single → B, multi → C), from the registry.
POLICIES = tuple(p for p, _ in label_ladder())
MODES = ("full", "cascade")


def training_rows(data: list[str], train_data: list[str], seed: int, train_fraction: float) -> list[tuple[str, Any]]:
    """(file name, row) pairs: the training half of each ``data`` file (the split every bench uses), all
    rows of each ``train_data`` file; interleaved round robin across files."""
    per_file: list[list[tuple[str, Any]]] = []
    for path in data:
        train, _ = split_rows(read_rows(path), seed, train_fraction)
        per_file.append([(Path(path).name, r) for r in train])
    for path in train_data:
        per_file.append([(Path(path).name, r) for r in read_rows(path)])
    out = []
    for i in range(max((len(f) for f in per_file), default=0)):
        out += [f[i] for f in per_file if i < len(f)]
    return out


def run_key(file: str, qid: Any, model: str, policy: str, mode: str = "full") -> str:
    """One answer's key. Full-matrix and cascade answers are kept apart: a cascade runs a later pair only
    where the earlier ones failed, so its answers cannot stand in for an unbiased full-matrix run (runs
    written before modes existed were full-matrix ones)."""
    base = f"{file}|{qid}|{model}|{policy}"
    return base if mode != "cascade" else base + "|cascade"


def read_runs(path: Path) -> dict[str, LadderRun]:
    """The runs so far. A line cut short (the collector killed mid-write) is skipped, and that answer is
    simply asked again."""
    runs: dict[str, LadderRun] = {}
    if path.exists():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                runs[run_key(rec["file"], rec["id"], rec["model"], rec["policy"], rec.get("mode", "full"))] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                logger.warning("%s:%d: not a complete run, skipped (it will be answered again)", path, lineno)
    return runs


def _append(path: Path, rec: Mapping[str, Any]) -> None:
    with path.open("a+b") as fh:
        fh.seek(0, 2)
        if fh.tell() > 0:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")  # close a line cut short, so this one stands on its own
        fh.write((json.dumps(rec) + "\n").encode("utf-8"))


def planned_pairs(
    row: dict[str, Any], models: list[str], policies: tuple[str, ...], mode: str
) -> list[tuple[str, str]]:
    """The (model, policy) pairs a question is answered with, in the order they are tried."""
    allowed = [p for p in policies if row.get("contexts") or p == "none"]  # no passages: nothing to retrieve
    if mode == "cascade" and (row.get("hops") or 1) < 2:
        allowed = [p for p in allowed if p != "multi"]
    return [(m, p) for p in allowed for m in models]


def _done(done: dict[str, LadderRun], file: str, qid: Any, model: str, policy: str, mode: str) -> LadderRun | None:
    """The answer a run of this mode can use: its own mode's, and for a cascade a full-matrix one too."""
    rec = done.get(run_key(file, qid, model, policy, mode))
    if rec is None and mode == "cascade":
        rec = done.get(run_key(file, qid, model, policy, "full"))
    return rec


def _finished(
    file: str, row: dict[str, Any], pairs: list[tuple[str, str]], done: dict[str, LadderRun], mode: str
) -> bool:
    recs = [_done(done, file, row.get("id"), m, p, mode) for m, p in pairs]
    if mode == "cascade" and any(r is not None and is_correct(r["em"], r["f1"]) for r in recs):
        return True
    return all(r is not None for r in recs)


def collect_ladder(
    config: AppConfig,
    out: str | Path,
    *,
    data: list[str],
    train_data: list[str] | None = None,
    models: list[str] | None = None,
    policies: tuple[str, ...] = POLICIES,
    mode: str = "full",
    seed: int = 0,
    train_fraction: float = 0.5,
    limit: int | None = None,
    max_tokens: int = 32,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Answer up to ``limit`` questions (all by default) with the ladder (``mode``: every pair, or the
    cascade that stops at the first correct one); stop early after ``budget_s`` seconds (a later run
    resumes)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not policies or set(policies) - set(POLICIES):
        raise ValueError(f"policies must be some of {', '.join(POLICIES)}, not {', '.join(policies) or 'none at all'}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_path = out_dir / "runs.jsonl"
    models = models or [m.id for m in config.models]
    rows = training_rows(data, train_data or [], seed, train_fraction)
    if limit is not None:
        rows = rows[:limit]
    done = read_runs(runs_path)
    plans = {(f, r.get("id")): planned_pairs(r, models, policies, mode) for f, r in rows}
    todo = [(f, r) for f, r in rows if not _finished(f, r, plans[(f, r.get("id"))], done, mode)]
    started = time.perf_counter()
    answered = 0
    if todo:
        evaluator = Evaluator(config, models=models)
        services: dict[str, RagService] = {}
        sources = {Path(p).name: p for p in [*data, *(train_data or [])]}
        for n, (file, row) in enumerate(todo, start=1):
            if budget_s is not None and time.perf_counter() - started > budget_s:
                break
            if file not in services:
                services[file] = evaluator.service_for(sources[file])
            for model, policy in plans[(file, row.get("id"))]:
                rec = _done(done, file, row.get("id"), model, policy, mode)
                if rec is None:
                    pred = asyncio.run(
                        evaluator.answer_row(services[file], row, policy, max_tokens=max_tokens, model=model)
                    )
                    rec = {
                        "file": file,
                        "id": row.get("id"),
                        "question": row["question"],
                        "hops": row.get("hops"),
                        "model": model,
                        "policy": policy,
                        "mode": mode,
                        "prediction": pred["prediction"],
                        "em": pred["em"],
                        "f1": pred["f1"],
                        "latency_s": pred["latency_s"],
                        "prompt_tokens": pred["prompt_tokens"],
                        "completion_tokens": pred["completion_tokens"],
                        "llm_calls": pred["llm_calls"],
                    }
                    _append(runs_path, rec)
                    done[run_key(file, row.get("id"), model, policy, mode)] = rec
                    answered += 1
                if mode == "cascade" and is_correct(rec["em"], rec["f1"]):
                    break
            if n % 5 == 0 or n == len(todo):
                print(f"  ladder: {n}/{len(todo)} questions, {time.perf_counter() - started:.0f} s", flush=True)
    complete = sum(1 for f, r in rows if _finished(f, r, plans[(f, r.get("id"))], done, mode))
    return {
        "runs_file": str(runs_path),
        "mode": mode,
        "answered_now": answered,
        "questions": len(rows),
        "questions_complete": complete,
        "runs": len(done),
        "seconds": round(time.perf_counter() - started, 1),
    }
