"""A draft pair must share one tokenizer: the target verifies the draft's token ids one to one, so a
draft whose ids mean other strings would be accepted or rejected at random. Checked at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.errors import ConfigError


def load_tokenizer(folder: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def check_same_tokenizer(target: Any, draft: Any, *, target_name: str, draft_name: str) -> None:
    """Refuse a pair whose vocabularies (token string → id, special tokens included) differ."""
    tv, dv = target.get_vocab(), draft.get_vocab()
    if tv == dv:
        return
    differing = sum(1 for tok, i in tv.items() if dv.get(tok) != i) + sum(1 for tok in dv if tok not in tv)
    raise ConfigError(
        f"draft model {draft_name!r} cannot draft for {target_name!r}: their tokenizers differ "
        f"({len(dv)} vs {len(tv)} tokens, {differing} token ids differ); a draft model needs the target's tokenizer"
    )


def check_draft_folder(target: Any, folder: str | Path, *, target_name: str, draft_name: str) -> None:
    """Load a draft model folder's tokenizer and refuse it unless it is the target's (torch and vLLM alike)."""
    check_same_tokenizer(target, load_tokenizer(folder), target_name=target_name, draft_name=draft_name)
