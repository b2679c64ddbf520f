"""Attention maps: every layer's and head's weights for one text, read through the shared attention's
`return_weights` path, as arrays and as heatmaps with token labels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.contract import is_decoder
from .inputs import check_layer_head, device_of, encode_text, evaluation_mode, require_attention, token_labels


@dataclass
class AttentionMap:
    """Attention of one text: weights (layers, heads, T, T), rows = querying token, columns = attended token."""

    tokens: list[str]
    ids: list[int]
    weights: np.ndarray
    causal: bool

    def select(self, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """The weights of one layer and/or head: (T, T) for both, (heads, T, T) or (layers, T, T) for one."""
        n_layer, n_head = self.weights.shape[:2]
        if layer is not None and not 0 <= layer < n_layer:
            raise ValueError(f"layer {layer} does not exist: the model has {n_layer} layers, numbered 0 to {n_layer - 1}")
        if head is not None and not 0 <= head < n_head:
            raise ValueError(f"head {head} does not exist: the model has {n_head} heads, numbered 0 to {n_head - 1}")
        chosen = self.weights if layer is None else self.weights[layer]
        if head is not None:
            chosen = chosen[head] if layer is not None else chosen[:, head]
        return chosen

    def plot(self, path: str | Path, layer: int | None = None, head: int | None = None) -> Path:
        """Save a heatmap PNG: the layers x heads grid, one layer's heads, one head across layers, or one map."""
        from .plots import attention_figure

        self.select(layer, head)  # range errors before drawing
        return attention_figure(self, path, layer, head)


@torch.no_grad()
def capture_attention(model, tokenizer, text: str) -> AttentionMap:
    """Run `text` through the model once with attention weights returned from every layer."""
    require_attention(model, "attention maps")
    if getattr(model.config, "layer_heads", None):  # the map is a layers x heads grid
        raise ValueError(f"attention maps need the same number of heads in every layer; this model's heads were "
                         f"pruned to {model.config.layer_heads} per layer (use explain lens or attribution)")
    ids = encode_text(model, tokenizer, text, keep="start")
    tensor = torch.tensor([ids], device=device_of(model))
    with evaluation_mode(model):
        _, weights = model.hidden_states(tensor, return_weights=True)
    stacked = torch.stack([w[0] for w in weights]).float().cpu().numpy()
    return AttentionMap(token_labels(tokenizer, ids), ids, stacked, is_decoder(model))


def explain_attention(model, tokenizer, text: str, *, layer: int | None = None, head: int | None = None,
                      out: str | Path | None = None) -> AttentionMap:
    """Capture the attention of `text`; with `out`, also draw it (the whole grid, or one --layer/--head)."""
    require_attention(model, "attention maps")
    check_layer_head(model, layer, head)
    result = capture_attention(model, tokenizer, text)
    if out is not None:
        result.plot(out, layer, head)
    return result
