"""Shared fixtures. Scopes are explicit: models, Redis and Ray Serve start once per session."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One Ray token for the session, set before Ray is imported (Ray reads it then): every Ray the tests start, a
# local one or the two-node cluster of tests/scale, and this process as their driver, agree on it.
if "RAY_AUTH_TOKEN" not in os.environ:
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)

from tests.utils import SHARED_DATA, TMP, free_port, seed_index  # noqa: E402 - after the environment above


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "dev_hotpotqa.jsonl").exists():
        pytest.fail(f"the shared QA sets are missing at {SHARED_DATA} (CI keeps shared/ beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def session_tmp() -> Iterator[Path]:
    TMP.mkdir(parents=True, exist_ok=True)
    path = TMP / f"run-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def base_config(session_tmp: Path) -> dict[str, Any]:
    """Config sections for tests: their own index dir; the bundled corpus; in-memory cache; SmolLM2 alone
    (the embedded default's ladder loads a second model; tests that need it say so). No chunk KV computed ahead:
    an app would otherwise spend the cores on the whole bundled corpus's chunks while the test runs
    (tests/services/test_chunk_precompute.py and the llama.cpp engine's tests check that work)."""
    return {
        "models": [{"id": "smollm2-135m-instruct", "chunk_cache": {"precompute": False}}],
        "index": {"dir": str(session_tmp / "index")},
        "ray": {"temp_dir": str(TMP / "ray"), "num_cpus": 2},
        "cache": {"response_cache_url": "memory://"},
    }


@pytest.fixture(scope="session")
def embedder() -> Any:
    from retrieval.embedder import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def hashing_embedder() -> Any:
    """The embedder's interface without a model (tests/fakes.py): for tests of the edge, the pipeline's control
    flow and billing, where what retrieval finds is not what they check."""
    from tests.fakes import HashingEmbedder

    return HashingEmbedder()


@pytest.fixture(scope="session")
def engine() -> Any:
    from services.config import ModelConfig, load_config
    from services.workers.engines.torch_engine import TorchEngine

    return TorchEngine(ModelConfig(), cache_dir=load_config({}).cache_dir)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server: the one .ci/run started (RAGYARD_TEST_REDIS_URL), or one of our own."""
    given = os.environ.get("RAGYARD_TEST_REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; `make test` installs it (Debian package redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def bundled_index(base_config: dict[str, Any], embedder: Any, session_tmp: Path) -> Path:
    """The bundled corpus indexed once, with the real embedder and the default chunking, in a directory of its
    own (closed, its writer lock free). The fixtures that serve the corpus start from a copy (`tests.utils.seed_index`):
    their retriever then finds every document unchanged by its fingerprint instead of embedding the corpus
    again, which took each app start about 40 s of both cores. The first ingest itself is what this fixture
    runs, and tests/retrieval checks it."""
    from retrieval.retriever import Retriever
    from services.config import load_config
    from services.deployments.retriever import RetrieverService

    path = session_tmp / "bundled-index"
    config = load_config({**base_config, "index": {"dir": str(path)}})
    idx = config.index
    retriever = Retriever.create(
        index_dir=path,
        embedder=embedder,
        chunk_tokens=idx.chunk_tokens,
        chunk_overlap_tokens=idx.chunk_overlap_tokens,
    )
    service = RetrieverService(config, retriever=retriever)
    assert service.retriever.store.docs, "the bundled corpus indexed nothing"
    service.close()
    return path


@pytest.fixture(scope="session")
def local_service(
    base_config: dict[str, Any], engine: Any, embedder: Any, session_tmp: Path, bundled_index: Path
) -> Any:
    """The library path (no Ray) over the session's model and embedder, over the bundled corpus (a copy of the
    session's `bundled_index`)."""
    from retrieval.retriever import Retriever
    from services.config import load_config
    from services.deployments.retriever import RetrieverService
    from services.deployments.worker import Worker
    from services.pipeline import RagService, build_cache
    from services.pipeline.clients import local_retriever, local_worker

    raw = {**base_config, "index": {"dir": str(session_tmp / "local-index")}}
    seed_index(bundled_index, raw)
    config = load_config(raw)
    retriever = Retriever.create(index_dir=config.index.dir, embedder=embedder)
    rsvc = RetrieverService(config, retriever=retriever)
    worker = Worker(config, engine=engine)
    return RagService(
        config, local_retriever(rsvc), {config.default_model.id: local_worker(worker)}, cache=build_cache(config)
    )
