"""Helpers the tests share (fixtures are in the conftest.py of the folder that uses them): where things are, a
free loopback port and Serve started on one; `factories` builds configs and records."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
TMP = ROOT / ".tmp" / "tests"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(config: dict[str, Any], *, wait_ready_s: float = 300) -> str:
    """Serve ``config`` on a free loopback port; returns its URL. A port that another process took between
    `free_port` and Serve's bind (Ray's own processes open ports all the time) is retried with another, up
    to three times; anything else is raised."""
    from services.config import load_config
    from services.serve import local as serving

    for attempt in range(3):
        cfg = load_config({**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": free_port()}})
        try:
            return serving.start(cfg, wait_ready_s=wait_ready_s)
        except Exception as exc:
            serving.stop()
            if "Failed to bind" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def seed_index(seed: Path, config: dict[str, Any]) -> None:
    """Copy the `bundled_index` into ``config``'s index dir (which must not exist yet). Refused when ``config``
    chunks or embeds otherwise than the seed: its retriever would keep the seed's chunks, as documents whose
    text did not change are not indexed again."""
    from services.config import load_config

    loaded = load_config(config)
    default = load_config({})
    chunking = (loaded.index.chunk_tokens, loaded.index.chunk_overlap_tokens, loaded.embedder.path)
    assert chunking == (default.index.chunk_tokens, default.index.chunk_overlap_tokens, default.embedder.path), (
        "seed_index: this config chunks or embeds otherwise than the seeded index"
    )
    assert loaded.corpus.paths == default.corpus.paths, "seed_index: this config serves another corpus"
    shutil.copytree(seed, loaded.index.dir, ignore=shutil.ignore_patterns(".lock"))
