"""Truncated-layer self-draft: the target's first L decoder layers with its own final norm and head
(LayerSkip-style early exit without training). It shares the target's weights, so it costs no memory
beyond its own KV cache; it drafts through the same loop as a separate draft model."""

from __future__ import annotations

import copy
from typing import Any

from services.workers.spec.draft_model import DraftModelDrafter


def shallow_copy(target: Any, layers: int) -> Any:
    """A causal-LM object whose modules are the target's: embeddings, layers[:L], final norm, head.

    Built on the meta device (no weights allocated), then every submodule is pointed at the target's,
    so nothing is copied. Works for decoder-only HF models with ``model.layers`` (Llama, Mistral, Qwen2).
    """
    import torch
    from torch import nn

    inner: Any = getattr(target, "model", None)
    total = len(getattr(inner, "layers", []))
    if not total:
        raise ValueError("self_draft needs a decoder-only model with model.layers")
    if not 1 <= layers < total:
        raise ValueError(f"self_draft_layers must be between 1 and {total - 1} for this model, got {layers}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    with torch.device("meta"):
        shallow = type(target)(config)
    for name, module in inner.named_children():
        if name == "layers":
            shallow.model.layers = nn.ModuleList(list(inner.layers)[:layers])
        else:
            setattr(shallow.model, name, module)
    shallow.lm_head = target.lm_head
    meta = [n for n, t in [*shallow.named_parameters(), *shallow.named_buffers()] if t.is_meta]
    if meta:
        raise ValueError(f"self_draft could not share these target tensors: {', '.join(meta[:5])}")
    shallow.generation_config = target.generation_config
    return shallow.eval()


class SelfDrafter(DraftModelDrafter):
    name = "self_draft"

    def __init__(self, target: Any, device: Any, layers: int) -> None:
        super().__init__(shallow_copy(target, layers), device, label=f"self_draft(L={layers})")
        self.layers = layers
