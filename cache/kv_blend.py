"""Prefill that reuses stored per-chunk KV: position re-alignment and selective recompute (CacheBlend).

A chunk's KV is computed once, alone after the shared system prefix, at positions ``base .. base+n-1``.
At request time the chunks sit elsewhere and next to other chunks, so their stored KV is wrong twice:

* the keys carry RoPE rotations for the old positions. RoPE rotates each pair of key dimensions by an
  angle proportional to the position, so keys move to a new offset by one more rotation by the shift
  (``realign``); values carry no position.
* each chunk never saw the chunks before it. Following CacheBlend, every token runs the first layer in
  full (cheap, and exact: a layer-0 key or value depends on its token and position only); the tokens whose
  layer-1 KV then deviates most from the stored KV are recomputed through all the other layers, the rest
  keep their stored KV. The budget is a fraction of the chunk tokens, spent where the deviation is, so
  chunks that depend more on their neighbours get more of it. Tokens no entry covers (separators, the
  question) are always computed.

This is the model's own decoder run layer by layer, written against the HF Llama module layout (Llama,
Mistral, Qwen2 share it), because no library runs a prefill where each layer sees a mix of stored and
fresh KV at scattered positions: HF's forward can only append to a cache, and LMCache's blending lives
inside vLLM's GPU kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from cache.errors import CacheError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedModelError(CacheError):
    """The chunk-KV cache cannot drive this model's decoder."""


@dataclass
class BlendResult:
    logits: torch.Tensor  # the next-token logits after the last prompt position, (vocab,)
    keys: torch.Tensor  # (layers, 1, kv_heads, N, head_dim), RoPE applied at the prompt's positions
    values: torch.Tensor
    recomputed: torch.Tensor  # bool (N,): positions run through every layer
    deviation: torch.Tensor | None  # layer-1 KV deviation per candidate position (None when nothing was reused)
    cache: Any = None  # a ready DynamicCache when the prefill ran through the model's own forward


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVBlender:
    """Runs a HF decoder-only model's prefill over a mix of stored and fresh KV."""

    def __init__(self, model: Any) -> None:
        cfg = model.config
        if cfg.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"the chunk-KV cache runs {', '.join(SUPPORTED_MODEL_TYPES)} models; this one is {cfg.model_type!r}"
            )
        if getattr(cfg, "use_sliding_window", False) or (
            cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None)
        ):
            raise UnsupportedModelError("the chunk-KV cache does not run sliding-window attention")
        core = model.model
        self.rotary = core.rotary_emb
        if float(getattr(self.rotary, "attention_scaling", 1.0)) != 1.0:
            # Scaled RoPE variants multiply cos/sin by a factor: a second rotation would apply it twice.
            raise UnsupportedModelError("the chunk-KV cache needs RoPE without attention scaling")
        self.model = model
        self.embed = core.embed_tokens
        self.layers = core.layers
        self.norm = core.norm
        self.lm_head = model.lm_head
        self.n_layers = len(self.layers)
        attn = self.layers[0].self_attn
        self.head_dim = int(attn.head_dim)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.groups = int(attn.num_key_value_groups)
        self.scaling = float(attn.scaling)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device

    # -- positions -------------------------------------------------------------------------------

    def _cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.empty(0, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, positions[None].to(self.device))
        return cos, sin  # (1, n, head_dim)

    def realign(self, keys: torch.Tensor, shift: int) -> torch.Tensor:
        """Keys stored at positions p rotated to p + ``shift`` (any leading dims, last two (n, head_dim))."""
        if shift == 0:
            return keys
        cos, sin = self._cos_sin(torch.tensor([shift]))
        cos, sin = cos[0, 0], sin[0, 0]  # (head_dim,): the same extra angle for every token
        return keys * cos + _rotate_half(keys) * sin

    def empty_kv(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.n_layers, 1, self.kv_heads, n, self.head_dim)
        return (
            torch.zeros(shape, dtype=self.dtype, device=self.device),
            torch.zeros(shape, dtype=self.dtype, device=self.device),
        )

    # -- the decoder, layer by layer -------------------------------------------------------------

    def _run_layers(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        layers: range,
        full: bool,
    ) -> torch.Tensor:
        """Run ``layers`` for the tokens at ``positions`` (sorted), writing their fresh KV into the
        buffers. ``full`` means positions are 0..N-1 of the whole buffer: plain causal attention, the same
        kernel call as HF's own SDPA prefill, so a full run matches ``model.forward`` exactly."""
        n_total = keys.shape[3]
        cos, sin = self._cos_sin(positions)
        mask = None
        if not full:
            # Each recomputed token sees every position up to its own, stored or fresh.
            mask = (positions[:, None].to(self.device) >= torch.arange(n_total, device=self.device)[None, :])[
                None, None
            ]
        idx = positions.to(self.device)
        shape = (1, hidden.shape[1], -1, self.head_dim)
        for i in layers:
            layer = self.layers[i]
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(shape).transpose(1, 2)
            k = attn.k_proj(x).view(shape).transpose(1, 2)
            v = attn.v_proj(x).view(shape).transpose(1, 2)
            q = q * cos[:, None] + _rotate_half(q) * sin[:, None]
            k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
            if full:
                keys[i] = k
                values[i] = v
                out = F.scaled_dot_product_attention(
                    q, keys[i], values[i], scale=self.scaling, is_causal=True, enable_gqa=self.groups > 1
                )
            else:
                keys[i].index_copy_(2, idx, k)
                values[i].index_copy_(2, idx, v)
                out = F.scaled_dot_product_attention(
                    q, keys[i], values[i], attn_mask=mask, scale=self.scaling, enable_gqa=self.groups > 1
                )
            out = out.transpose(1, 2).reshape(1, hidden.shape[1], -1)
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden

    def _logits(self, hidden_last: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden_last))[0, -1]

    @torch.inference_mode()
    def compute_span(
        self, ids: list[int], keys: torch.Tensor, values: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """KV of ``ids[start:]`` given stored KV for ``ids[:start]`` in the buffers (a chunk alone after
        the prefix, or the prefix itself with ``start=0``). Returns the new tokens' (keys, values) as
        (layers, kv_heads, n, head_dim)."""
        n = len(ids)
        tokens = torch.tensor([ids[start:]], device=self.device)
        positions = torch.arange(start, n)
        hidden = self.embed(tokens)
        self._run_layers(hidden, positions, keys, values, range(self.n_layers), full=start == 0)
        return keys[:, 0, :, start:].clone(), values[:, 0, :, start:].clone()

    @torch.inference_mode()
    def prefill(
        self,
        ids: list[int],
        keys: torch.Tensor,
        values: torch.Tensor,
        stored: torch.Tensor,
        candidates: torch.Tensor,
        fraction: float,
        *,
        exact_at_full: bool = True,
    ) -> BlendResult:
        """Prefill ``ids`` over assembled buffers.

        ``stored`` (bool, N) marks positions whose buffers hold usable KV (prefix and chunk hits);
        ``candidates`` the stored positions that may be recomputed (chunk tokens; an exact prefix never
        is); ``fraction`` of the candidates is recomputed, picked by layer-1 deviation. Positions that are
        not stored are always computed. ``fraction >= 1`` (or nothing stored) is a plain full prefill;
        ``exact_at_full=False`` runs it through the blend path instead (every candidate recomputed over the
        re-aligned buffers), which is how the tests check that path against a full prefill.
        """
        n = len(ids)
        tokens = torch.tensor([ids], device=self.device)
        hidden = self.embed(tokens)
        every = torch.arange(n)
        if (fraction >= 1.0 and exact_at_full) or not bool(stored.any()):
            hidden = self._run_layers(hidden, every, keys, values, range(self.n_layers), full=True)
            return BlendResult(self._logits(hidden), keys, values, torch.ones(n, dtype=torch.bool), None)
        p = int(stored.sum())
        if not bool(candidates.any()) and bool(stored[:p].all()):
            # A stored prefix and nothing else: the model's own forward over the rest (prefix caching).
            cache = to_dynamic_cache(keys[:, :, :, :p], values[:, :, :, :p])
            out = self.model(input_ids=tokens[:, p:], past_key_values=cache, use_cache=True, logits_to_keep=1)
            recomputed = torch.zeros(n, dtype=torch.bool)
            recomputed[p:] = True
            return BlendResult(out.logits[0, -1], keys, values, recomputed, None, cache)
        cand_idx = torch.nonzero(candidates, as_tuple=False).flatten()
        budget = min(len(cand_idx), math.ceil(fraction * len(cand_idx))) if fraction > 0 else 0
        hidden = self._run_layers(hidden, every, keys, values, range(0, 1), full=True)
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[~stored] = True
        deviation = None
        if budget > 0:
            layer = self.layers[1]
            attn = layer.self_attn
            x = layer.input_layernorm(hidden[:, cand_idx.to(self.device)])
            shape = (1, len(cand_idx), -1, self.head_dim)
            k = attn.k_proj(x).view(shape).transpose(1, 2)
            v = attn.v_proj(x).view(shape).transpose(1, 2)
            cos, sin = self._cos_sin(cand_idx)
            k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
            dev_idx = cand_idx.to(self.device)
            dk = (k - keys[1][:, :, dev_idx]).float().pow(2).sum(dim=(0, 1, 3))
            dv = (v - values[1][:, :, dev_idx]).float().pow(2).sum(dim=(0, 1, 3))
            deviation = (dk + dv).cpu()
            top = torch.topk(deviation, budget).indices
            chosen[cand_idx[top]] = True
        if not bool(chosen[-1]):
            raise ValueError("the last prompt position must be computed (it is never stored)")
        positions = torch.nonzero(chosen, as_tuple=False).flatten()
        hidden = hidden[:, positions.to(self.device)]
        hidden = self._run_layers(hidden, positions, keys, values, range(1, self.n_layers), full=False)
        return BlendResult(self._logits(hidden), keys, values, chosen, deviation)


def to_dynamic_cache(keys: torch.Tensor, values: torch.Tensor) -> Any:
    """A HF ``DynamicCache`` holding the prefilled KV, ready for the decode loop."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i in range(keys.shape[0]):
        cache.update(keys[i], values[i], i)
    return cache
