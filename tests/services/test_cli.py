from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_eval_writes_metrics_and_predictions(
    shared_data: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGYARD_CACHE_DIR", str(Path.home() / ".cache" / "ragyard"))
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--data",
                str(shared_data / "dev_boolq.jsonl"),
                "--policy",
                "single",
                "--out",
                str(out),
                "--limit",
                "3",
                "--max-tokens",
                "8",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "n",
        "em",
        "f1",
        "mean_latency_s",
        "p50_latency_s",
        "p95_latency_s",
        "retrieval_steps_mean",
        "llm_calls_mean",
        "prompt_tokens_mean",
        "completion_tokens_mean",
    ):
        assert key in metrics
    assert metrics["n"] == 3 and metrics["retrieval_steps_mean"] == 1.0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(p["scored_as"] in ("yes", "no", "") for p in preds)


def test_ask_and_ingest_in_process(tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGYARD_INDEX__DIR", str(tmp_path / "idx"))
    monkeypatch.setenv("RAGYARD_CORPUS__INGEST_ON_START", "false")  # the note alone: what `ingest` added is found
    note = tmp_path / "note.md"
    note.write_text("# Quux\n\nZorblat is the capital of the kingdom of Quux.")
    assert main(["ingest", str(note)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == ["file:note.md"]
    assert main(["ask", "What is the capital of Quux?", "--max-tokens", "12", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["answer"] and any(c["title"] == "Quux" for c in rec["citations"])


def test_cli_reports_bad_config(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: -1\n")
    assert main(["--config", str(bad), "ask", "hi"]) == 2
    assert "server.port" in capsys.readouterr().err


def test_plan_writes_one_plan_per_question_without_answering(shared_data: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "plans"
    assert main(["plan", "--data", str(shared_data / "dev_hotpotqa.jsonl"), "--out", str(out), "--limit", "5"]) == 0
    rows = [json.loads(line) for line in (out / "plans.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["id"] == json.loads((shared_data / "dev_hotpotqa.jsonl").open().readline())["id"]
    for r in rows:
        assert r["policy"] in ("none", "single", "multi", "dragin")
        assert r["model"] in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
        assert r["complexity"]["label"] in ("A", "B", "C")
        assert abs(sum(r["complexity"]["probabilities"].values()) - 1) < 1e-3
    summary = json.loads(capsys.readouterr().out)
    assert summary["questions"] == 5 and sum(summary["policies"].values()) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    assert main(["plan", "--data", str(bad), "--out", str(tmp_path / "p2")]) == 2
    assert 'needs a non-empty "question"' in capsys.readouterr().err


def test_the_benchmark_commands_come_from_their_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench/` registers its commands through the "ragyard.commands" entry point; an install without it (the
    container image) keeps the serving commands and says nothing of the missing group."""
    from importlib.metadata import EntryPoint

    from services import cli

    commands = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "ask", "settings", "bench", "eval", "train-router"} <= set(commands)

    missing = EntryPoint("bench", "bench_not_installed.commands:register", "ragyard.commands")
    monkeypatch.setattr(cli, "entry_points", lambda group: [missing])
    commands = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "ask", "settings"} <= set(commands) and "bench" not in commands
