"""What every package's config section shares: the base model and the project root its defaults name."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Section(BaseModel):
    """One section of the app config: unknown keys are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")
