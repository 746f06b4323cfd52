from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.config import AppConfig, load_config
from services.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_are_valid() -> None:
    cfg = load_config({})
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8000
    assert cfg.default_model.engine == "llamacpp" and cfg.default_model.chunk_cache.enabled
    assert [m.engine for m in cfg.models] == ["llamacpp", "llamacpp"]
    assert cfg.cache.response_cache_url == "memory://"


def test_yaml_file_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ragyard.yaml"
    path.write_text("server:\n  port: 9001\nretrieval:\n  top_k: 3\n")
    assert load_config(path).server.port == 9001
    monkeypatch.setenv("PORT", "9100")
    monkeypatch.setenv("HOST", "127.0.0.2")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("RAGYARD_RETRIEVAL__TOP_K", "5")
    cfg = load_config(path)
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.2", 9100)
    assert cfg.cache.response_cache_url == "redis://127.0.0.1:6390/0"
    assert cfg.retrieval.top_k == 5


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"server": {"port": 70000}}, "server.port"),
        ({"retrieval": {"default_policy": "psychic"}}, "unknown; valid: adaptive, dragin, multi, none, single"),
        ({"models": [{"engine": "tensorflow"}]}, "models.0.engine"),
        ({"models": [{"default_max_tokens": 4000}]}, "default_max_tokens must not exceed"),
        ({"index": {"chunk_tokens": 64, "chunk_overlap_tokens": 64}}, "chunk_overlap_tokens"),
        ({"models": [{"id": "auto"}]}, "'auto' is reserved"),
        ({"models": [{"id": "a"}, {"id": "a"}]}, "unique"),
        ({"serverr": {}}, "serverr"),
        ({"retrieval": {"top_k": 30}}, "top_k must not exceed"),
        ({"models": [{"chunk_cache": {"recompute_fraction": 1.5}}]}, "models.0.chunk_cache.recompute_fraction"),
        ({"models": [{"chunk_cache": {"eviction": "fifo"}}]}, "models.0.chunk_cache.eviction"),
        ({"models": [{"chunk_cache": {"memory_bytes": -1}}]}, "models.0.chunk_cache.memory_bytes"),
        (
            {"models": [{"engine": "vllm", "chunk_cache": {"enabled": True}}]},
            "chunk_cache runs on the llamacpp or torch engine",
        ),
    ],
)
def test_invalid_config_names_the_path(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert fragment in str(info.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)


def test_model_lookup() -> None:
    cfg = AppConfig()
    assert cfg.model(cfg.default_model.id) is cfg.default_model
    with pytest.raises(KeyError):
        cfg.model("missing")


def test_vllm_refuses_drafters_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="self_draft runs on the torch engine only"):
        load_config({"models": [{"engine": "vllm", "speculative": {"method": "self_draft"}}]})
    with pytest.raises(ConfigError, match="hybrid runs on the torch engine only"):
        load_config({"models": [{"engine": "vllm", "speculative": {"method": "hybrid"}}]})
    with pytest.raises(ConfigError, match="stop_rule"):
        load_config({"models": [{"speculative": {"method": "ngram", "adaptive": True, "stop_rule": "guess"}}]})
    with pytest.raises(ConfigError, match="adaptive"):
        load_config({"models": [{"engine": "vllm", "speculative": {"method": "ngram", "adaptive": True}}]})
    with pytest.raises(ConfigError, match="engine_args"):
        load_config({"models": [{"engine": "vllm", "vllm": {"engine_args": "x"}}]})


def test_dragin_threshold_per_model_then_config_then_catalog() -> None:
    cfg = load_config({})
    assert [cfg.dragin_threshold(m.id) for m in cfg.models] == [0.45, 0.05]  # the catalog's calibrations
    pinned = load_config({"retrieval": {"dragin_threshold": 0.3}})
    assert {pinned.dragin_threshold(m.id) for m in pinned.models} == {0.3}
    own = load_config(
        {"models": [{"id": "x", "path": "/models/x", "dragin_threshold": 0.9}, {"id": "y", "path": "/y"}]}
    )
    assert own.dragin_threshold("x") == 0.9 and own.dragin_threshold("y") == 0.45
    with pytest.raises(ConfigError):
        load_config({"models": [{"dragin_threshold": 0}]})


def test_the_settings_reference_is_current() -> None:
    """services/settings.md is `ragyard settings` (written from the config models): a setting added, renamed or
    with a new default or description must be written there too."""
    from core.config import settings_table
    from services.cli import SETTINGS_INTRO

    root = Path(__file__).resolve().parents[2]
    now = settings_table(AppConfig, title="Settings", intro=SETTINGS_INTRO)
    assert (root / "services" / "settings.md").read_text() == now, "run `ragyard settings > services/settings.md`"
    for name in ("server.max_json_depth", "server.web_chat", "ray.max_queued_requests", "sla.latency_priors"):
        assert f"`{name}`" in now


def test_the_sample_config_holds_the_codes_defaults() -> None:
    """Each value services/ragyard.yaml sets is the code's default (it is a commented start, not an override),
    save the two paths it writes relative to where `ragyard` runs."""
    import yaml

    from services.config import AppConfig

    root = Path(__file__).resolve().parents[2]
    shipped = yaml.safe_load((root / "services" / "ragyard.yaml").read_text())
    default = AppConfig().model_dump(mode="json")
    relative = {"index.dir", "ray.temp_dir"}
    differs = []

    def walk(mine: Any, code: Any, path: str) -> None:
        if isinstance(mine, dict) and isinstance(code, dict):
            for key, value in mine.items():
                assert key in code, f"{path}{key} is not a setting"
                walk(value, code[key], f"{path}{key}.")
        elif path.rstrip(".") == "models":
            assert [m["id"] for m in mine] == [m["id"] for m in code]
            for m, c in zip(mine, code, strict=True):
                walk(m, c, "models[].")
        elif path.rstrip(".") not in relative and mine != code:
            differs.append((path.rstrip("."), mine, code))

    walk(shipped, default, "")
    assert differs == []
