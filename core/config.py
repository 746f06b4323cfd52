"""What every package's config section shares: the base model and the project root its defaults name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Section(BaseModel):
    """One section of the app config: unknown keys are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def settings_table(model: type[BaseModel], *, title: str, intro: str = "") -> str:
    """Every setting of ``model`` as markdown: one table per section (a nested model, or a list of them:
    ``models[]``), each row the dotted name, its default and its description, read from the model itself so the
    reference cannot drift from the code. Written by hand: pydantic gives a JSON schema, not a reader's page."""
    rows: dict[str, list[tuple[str, str, str]]] = {}
    defaults: dict[str, list[dict[str, Any]]] = {}

    def walk(cls: type[BaseModel], prefix: str, section: str) -> None:
        for name, field in cls.model_fields.items():
            dotted = f"{prefix}{name}"
            inner = _section_type(field.annotation)
            if inner is not None:
                many = get_origin(field.annotation) is list
                if many:  # a list's own default, each entry as far as it differs from the entry's defaults
                    entries = field.get_default(call_default_factory=True) or []
                    first = next(iter(inner.model_fields))  # its name (`id`), shown even where it is the default
                    defaults[dotted + "[]"] = [
                        {first: getattr(e, first), **e.model_dump(mode="json", exclude_defaults=True)} for e in entries
                    ]
                walk(inner, f"{dotted}{'[]' if many else ''}.", dotted + ("[]" if many else ""))
                continue
            shown = "(required)" if field.is_required() else _shown(field.get_default(call_default_factory=True))
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.setdefault(section, []).append((dotted, shown.replace("|", "\\|"), description))

    walk(model, "", "top level")
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    for section, entries in rows.items():
        lines += [f"## `{section}`" if section != "top level" else "## Top level", ""]
        if defaults.get(section):
            lines += [f"Default: `{_shown(defaults[section])}`", ""]
        lines += ["| setting | default | what it does |", "| --- | --- | --- |"]
        lines += [f"| `{name}` | `{default}` | {text} |" for name, default, text in entries]
        lines.append("")
    return "\n".join(lines)


def _shown(default: Any) -> str:
    """A default as JSON, with this machine's paths written as where they come from (so the page is the same
    on every machine): the project root as ``<repo>``, the home directory as ``~``."""
    text = json.dumps(default, default=str)
    return text.replace(str(PROJECT_ROOT), "<repo>").replace(str(Path.home()), "~")


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (itself, optional, or a list of it); None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is dict:  # a mapping of models (tenants, prices) is a value, not a section
        return None
    for arg in get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None
