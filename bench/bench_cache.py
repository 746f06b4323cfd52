"""`ragyard bench cache`: what the response cache serves, exact and semantic, and how often a semantic hit is
wrong.

- **Pairs** (the calibration): real questions from the open-domain sets pyserini's jar carries (Natural
  Questions, TriviaQA, SQuAD 1.1 dev, WebQuestions; `bench.datasets.QUESTION_SETS`), each paired with its
  nearest neighbour in its own set by the embedder's cosine (pairs at 0.8 or more; questions that normalise to
  the same text are exact hits, left out). A pair is *same* when the two questions share a gold answer, else
  *different*: a served semantic hit on a different pair is a wrong hit. The threshold is chosen on the
  calibration sets (NQ dev, TriviaQA dev, SQuAD dev) as the one with the most net value, right hits less
  ``wrong_cost`` times the wrong ones, with the guard on; the evaluation sets (NQ test, TriviaQA test,
  WebQuestions test) report it. Labels by shared answer are noisy (NQ's annotators mark different spans of
  one answer; a question asked at two times has two answers), so precision here is a floor.
- **Meaning flips**: evaluation questions turned into their opposite by rule (a negation inserted or
  contracted, a number changed, a word swapped for its opposite), each against its original: their cosine
  (how close the embedder puts them) and the wrong hits with and without the guard (the goal is 0 with it).
- **Replay**: a question stream through the real answer service (`build_local`, the ``--models`` model, no
  retrieval, greedy), with the semantic layer off and on, side by side: distinct questions first, then exact
  repeats, repeats reworded on the surface (case, spacing, punctuation), the neighbours of the *same* and
  *different* pairs, and the meaning flips. Exact and semantic hit rates, wrong hits by kind, and the median
  time of a hit against a miss.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import string
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.datasets import question_set
from bench.reports import write_report
from cache.semantic_cache import OPPOSITES, conflict
from services.config import AppConfig

CALIBRATION = ("nq-dev", "trivia-dev", "squad-test")
EVALUATION = ("nq-test", "trivia-test", "wq-test")
FLOOR = 0.8
THRESHOLDS = [round(x, 3) for x in np.arange(0.85, 0.996, 0.005)]
_AUX = re.compile(r"\b(is|are|was|were|does|did|do|can|could|will|would|should|has|have|had)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\b(\d+)\b")
_PUNCT = set(string.punctuation)


def _norm(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


@dataclass
class Pair:
    a: str
    b: str
    cosine: float
    same: bool
    conflict: str | None


def near_pairs(rows: list[tuple[str, list[str]]], vectors: np.ndarray, floor: float = FLOOR) -> list[Pair]:
    """Each question with its nearest neighbour of the set (once per pair), at ``floor`` or more."""
    questions = [q for q, _ in rows]
    normal = [_norm(q) for q in questions]
    answers = [{_norm(a) for a in ans} - {""} for _, ans in rows]
    pairs, seen = [], set()
    for start in range(0, len(questions), 2048):
        sims = vectors[start : start + 2048] @ vectors.T
        for r in range(sims.shape[0]):
            sims[r, start + r] = -1.0
        best = sims.argmax(axis=1)
        for r, j in enumerate(best.tolist()):
            i, cos = start + r, float(sims[r, j])
            key = (min(i, j), max(i, j))
            if cos < floor or key in seen or normal[i] == normal[j]:
                continue
            seen.add(key)
            pairs.append(Pair(questions[i], questions[j], cos, bool(answers[i] & answers[j]), None))
    for p in pairs:
        p.conflict = conflict(p.a, p.b)
    return pairs


def sweep(pairs: list[Pair], wrong_cost: float) -> list[dict[str, Any]]:
    rows = []
    for t in THRESHOLDS:
        above = [p for p in pairs if p.cosine >= t]
        served = [p for p in above if p.conflict is None]
        right, wrong = sum(p.same for p in served), sum(not p.same for p in served)
        rows.append(
            {
                "threshold": t,
                "pairs_above": len(above),
                "hits": len(served),
                "right": right,
                "wrong": wrong,
                "precision": round(right / len(served), 3) if served else None,
                "precision_unguarded": round(sum(p.same for p in above) / len(above), 3) if above else None,
                "net": round(right - wrong_cost * wrong, 1),
            }
        )
    return rows


def flips(question: str, rng: random.Random) -> list[tuple[str, str]]:
    """(kind, flipped) for each rule that applies to ``question``."""
    out = []
    aux = _AUX.search(question)
    if aux:
        word = aux.group(1)
        out.append(("negation", question[: aux.end()] + " not" + question[aux.end() :]))
        if word.lower() in {"is", "are", "was", "were", "does", "did", "do", "has", "have", "should", "could"}:
            out.append(("negation", question[: aux.end()] + "n't" + question[aux.end() :]))
    num = _NUMBER.search(question)
    if num:
        changed = str(int(num.group(1)) + rng.choice([1, 2, 10]))
        out.append(("number", question[: num.start()] + changed + question[num.end() :]))
    words = question.split()
    for i, w in enumerate(words):
        low = w.lower().strip("?.,")
        other = next((next(iter(pair - {low})) for pair in OPPOSITES if low in pair and len(pair) == 2), None)
        if other:
            out.append(("opposite", " ".join([*words[:i], w.lower().replace(low, other), *words[i + 1 :]])))
            break
    return out


def _surface(question: str, rng: random.Random) -> str:
    """The same question typed differently: case, spacing, the question mark."""
    q = question.rstrip("?").strip()
    q = q.upper() if rng.random() < 0.3 else (q.lower() if q[:1].isupper() else q[:1].upper() + q[1:])
    return ("  " + q + " ?") if rng.random() < 0.5 else q + "?"


def _replay(
    config: AppConfig, model: str, stream: list[dict[str, Any]], semantic: bool, threshold: float, max_tokens: int
) -> dict[str, Any]:
    from retrieval.policies.base import Question
    from services.pipeline import AnswerRequest, build_local

    cache = config.cache.model_copy(
        update={
            "enabled": True,
            "semantic": semantic,
            "semantic_threshold": threshold,
            "response_cache_url": "memory://",
        }
    )
    cfg = config.model_copy(update={"cache": cache, "models": [m for m in config.models if m.id == model]})
    svc = build_local(cfg)
    verdicts: dict[str, dict[str, int]] = {}
    seconds: dict[str, list[float]] = {"hit": [], "semantic": [], "miss": []}
    wrong: dict[str, int] = {}
    similarities = []
    for item in stream:
        req = AnswerRequest(question=Question(text=item["question"]), model=model, policy="none", max_tokens=max_tokens)
        started = time.perf_counter()
        record = asyncio.run(svc.answer(req))
        took = time.perf_counter() - started
        verdict = record.cache.response
        seconds.setdefault(verdict, []).append(took)
        verdicts.setdefault(item["kind"], {}).setdefault(verdict, 0)
        verdicts[item["kind"]][verdict] += 1
        if verdict == "semantic":
            assert record.cache.semantic is not None
            similarities.append(record.cache.semantic["similarity"])
            matched = record.cache.semantic["question"]
            if item.get("wrong_if_matched") and _norm(matched) in {_norm(q) for q in item["wrong_if_matched"]}:
                wrong[item["kind"]] = wrong.get(item["kind"], 0) + 1
    n = len(stream)
    exact = sum(v.get("hit", 0) for v in verdicts.values())
    sem = sum(v.get("semantic", 0) for v in verdicts.values())
    return {
        "requests": n,
        "exact_hits": exact,
        "semantic_hits": sem,
        "exact_hit_rate": round(exact / n, 3),
        "semantic_hit_rate": round(sem / n, 3),
        "wrong_hits": sum(wrong.values()),
        "wrong_hit_share": round(sum(wrong.values()) / n, 3),
        "wrong_by_kind": wrong,
        "verdicts_by_kind": verdicts,
        "median_s": {k: round(statistics.median(v), 4) for k, v in seconds.items() if v},
        "semantic_similarity_min": min(similarities) if similarities else None,
    }


def _stream(
    evaluation: list[Pair], flipped: list[dict[str, Any]], rng: random.Random, per_kind: int
) -> list[dict[str, Any]]:
    same = [p for p in evaluation if p.same]
    different = [p for p in evaluation if not p.same]
    rng.shuffle(same)
    rng.shuffle(different)
    same, different = same[:per_kind], different[:per_kind]
    flips_used = flipped[:per_kind]
    firsts = [p.a for p in same + different] + [f["original"] for f in flips_used]
    firsts = list(dict.fromkeys(firsts))
    stream = [{"kind": "first", "question": q} for q in firsts]
    later = [{"kind": "repeat", "question": q} for q in rng.sample(firsts, min(per_kind, len(firsts)))]
    later += [{"kind": "surface", "question": _surface(q, rng)} for q in rng.sample(firsts, min(per_kind, len(firsts)))]
    later += [{"kind": "paraphrase", "question": p.b} for p in same]
    later += [{"kind": "different", "question": p.b, "wrong_if_matched": [p.a]} for p in different]
    later += [
        {"kind": f"flip_{f['kind']}", "question": f["flipped"], "wrong_if_matched": [f["original"]]} for f in flips_used
    ]
    rng.shuffle(later)
    return stream + later


def bench_cache(
    config: AppConfig,
    out: str,
    *,
    model: str = "smollm2-135m-instruct",
    wrong_cost: float = 2.0,
    per_kind: int = 30,
    max_tokens: int = 16,
    seed: int = 0,
) -> str:
    from retrieval.embedder import Embedder

    rng = random.Random(seed)
    embedder = Embedder()

    def vectors(texts: list[str]) -> np.ndarray:
        v = np.asarray(embedder.encode(texts), np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    sets: dict[str, list[Pair]] = {}
    sizes = {}
    started = time.perf_counter()
    for name in CALIBRATION + EVALUATION:
        rows = question_set(name)
        sizes[name] = len(rows)
        sets[name] = near_pairs(rows, vectors([q for q, _ in rows]))
    embed_s = time.perf_counter() - started
    calibration = [p for name in CALIBRATION for p in sets[name]]
    evaluation = [p for name in EVALUATION for p in sets[name]]
    cal_sweep = sweep(calibration, wrong_cost)
    best = max(cal_sweep, key=lambda r: (r["net"], r["threshold"]))
    threshold = best["threshold"]
    pays = best["net"] > 0
    eval_sweep = sweep(evaluation, wrong_cost)
    at = next(r for r in eval_sweep if r["threshold"] == threshold)
    per_set = {name: next(r for r in sweep(sets[name], wrong_cost) if r["threshold"] == threshold) for name in sets}

    # Meaning flips of evaluation questions (the first members of their pairs, and more questions for count).
    originals = [q for name in EVALUATION for q, _ in question_set(name)]
    rng.shuffle(originals)
    flipped = [{"kind": k, "original": q, "flipped": f} for q in originals[:400] for k, f in flips(q, rng)]
    va = vectors([f["original"] for f in flipped])
    vb = vectors([f["flipped"] for f in flipped])
    cos = (va * vb).sum(axis=1)
    by_kind: dict[str, dict[str, Any]] = {}
    for f, c in zip(flipped, cos.tolist(), strict=True):
        f["cosine"] = c
        k = by_kind.setdefault(f["kind"], {"pairs": 0, "cosines": [], "wrong_unguarded": 0, "wrong_guarded": 0})
        k["pairs"] += 1
        k["cosines"].append(c)
        if c >= threshold:
            k["wrong_unguarded"] += 1
            k["wrong_guarded"] += conflict(f["original"], f["flipped"]) is None
    flip_summary = {
        kind: {
            "pairs": k["pairs"],
            "median_cosine": round(statistics.median(k["cosines"]), 3),
            "above_threshold": k["wrong_unguarded"],
            "wrong_hits_unguarded": k["wrong_unguarded"],
            "wrong_hits_guarded": k["wrong_guarded"],
        }
        for kind, k in by_kind.items()
    }
    rng.shuffle(flipped)
    close = [p for p in evaluation if p.cosine >= threshold]
    stream = _stream(close, flipped, rng, per_kind)
    replay = {
        "exact_only": _replay(config, model, stream, False, threshold, max_tokens),
        "semantic": _replay(config, model, stream, True, threshold, max_tokens),
    }
    results = {
        "question_sets": sizes,
        "embed_and_pair_s": round(embed_s, 1),
        "calibration": {"sets": list(CALIBRATION), "pairs": len(calibration), "sweep": cal_sweep, "chosen": best},
        "evaluation": {
            "sets": list(EVALUATION),
            "pairs": len(evaluation),
            "at_threshold": at,
            "sweep": eval_sweep,
            "per_set": per_set,
        },
        "flips": flip_summary,
        "replay": replay,
        "threshold": threshold,
        "pays_on_calibration": pays,
    }
    goals = {
        "threshold": threshold,
        "evaluation_precision": at["precision"],
        "flip_wrong_hits_guarded": sum(k["wrong_hits_guarded"] for k in flip_summary.values()),
        "replay_semantic_hit_rate": replay["semantic"]["semantic_hit_rate"],
        "replay_wrong_hit_share": replay["semantic"]["wrong_hit_share"],
    }
    settings = {"model": model, "wrong_cost": wrong_cost, "per_kind": per_kind, "max_tokens": max_tokens, "seed": seed}
    return write_report(out, "cache", goals, results, settings, _markdown)


def _markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    cal, ev = r["calibration"]["chosen"], r["evaluation"]["at_threshold"]
    lines = [
        f"Threshold {r['threshold']} (calibration: most right hits less {report['settings']['wrong_cost']}x the wrong "
        f"ones; {'pays' if r['pays_on_calibration'] else 'does not pay'} on the calibration pairs).",
        "",
        "| near pairs (cosine >= 0.8) | pairs | served | right | wrong | precision | precision without guard |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| calibration ({', '.join(r['calibration']['sets'])}) | {r['calibration']['pairs']} | {cal['hits']} | "
        f"{cal['right']} | {cal['wrong']} | {cal['precision']} | {cal['precision_unguarded']} |",
        f"| evaluation ({', '.join(r['evaluation']['sets'])}) | {r['evaluation']['pairs']} | {ev['hits']} | "
        f"{ev['right']} | {ev['wrong']} | {ev['precision']} | {ev['precision_unguarded']} |",
        "",
        "| meaning flip | pairs | median cosine | over the threshold | wrong hits without guard | with guard |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, f in r["flips"].items():
        lines.append(
            f"| {kind} | {f['pairs']} | {f['median_cosine']} | {f['above_threshold']} | "
            f"{f['wrong_hits_unguarded']} | {f['wrong_hits_guarded']} |"
        )
    lines += [
        "",
        "| replay | requests | exact hits | semantic hits | wrong hits | median s: exact hit / semantic / miss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in r["replay"].items():
        med = run["median_s"]
        lines.append(
            f"| {name} | {run['requests']} | {run['exact_hits']} ({run['exact_hit_rate']}) | "
            f"{run['semantic_hits']} ({run['semantic_hit_rate']}) | {run['wrong_hits']} {run['wrong_by_kind'] or ''} | "
            f"{med.get('hit', '-')} / {med.get('semantic', '-')} / {med.get('miss', '-')} |"
        )
    return "\n".join(lines) + "\n"
