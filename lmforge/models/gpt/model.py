"""GPT-style decoders: GPT-2 (learned positions, LayerNorm, GELU, biases), Llama (RoPE, RMSNorm, SwiGLU,
grouped-query attention) and Qwen2 (Llama with biased q/k/v) from one config with a few switches."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..layers import MLP, Attention, KVCache, RotaryEmbedding, document_mask, init_weights, make_cache, make_norm

if TYPE_CHECKING:  # annotations only: config.py reads the family registry in models/
    from ...config import ModelConfig


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.ln_1, self.attn = make_norm(cfg), Attention(cfg, layer)
        self.ln_2, self.mlp = make_norm(cfg), MLP(cfg, layer=layer)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, *, pad_mask=None, cache=None, rope=None, return_weights: bool = False, mask=None):
        attended = self.attn(self.ln_1(x), causal=True, pad_mask=pad_mask, cache=cache, rope=rope,
                             return_weights=return_weights, mask=mask)
        attended, weights = attended if return_weights else (attended, None)
        if self.training:  # skipped in eval, where dropout is the identity: two module calls less per step
            attended = self.drop(attended)
        x = x + attended
        x = x + (self.drop(self.mlp(self.ln_2(x))) if self.training else self.mlp(self.ln_2(x)))
        return (x, weights) if return_weights else x


class GPT(nn.Module):
    """A decoder-only language model. forward(ids) -> next-token logits of shape (B, T, vocab)."""

    is_causal = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.block_size, cfg.rope_theta) if cfg.position == "rope" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.classifier = nn.Linear(cfg.n_embd, len(cfg.labels), bias=cfg.classifier_bias) if cfg.labels else None
        init_weights(self, cfg.n_layer)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @property
    def context_length(self) -> int:
        """The longest sequence it attends over; generation slides its window past it."""
        return self.config.block_size

    def make_cache(self, batch: int, max_len: int, dtype=torch.float32, device="cpu") -> list[KVCache]:
        """An empty generation cache: one KVCache per layer for `max_len` positions."""
        return make_cache(self.config, batch, max_len, dtype, device)

    def hidden_states(self, ids, *, positions=None, pad_mask=None, cache: list[KVCache] | None = None,
                      return_weights: bool = False, segments=None):
        """Final-norm hidden states (B, T, n_embd). `pad_mask` (B, past+T) marks real tokens; `segments` (B, T)
        numbers the documents packed in a row (none attends across them); with return_weights also each layer's
        attention (B, H, T, past+T)."""
        B, T = ids.shape
        past = cache[0].length if cache else 0
        if positions is None:
            positions = torch.arange(past, past + T, device=ids.device)
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size={self.config.block_size}")
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        rope = self.rope(positions) if self.rope is not None else None
        x = self.drop(x) if self.training else x
        weights, mask = [], document_mask(segments) if segments is not None else None
        for i, block in enumerate(self.h):
            x = block(x, pad_mask=pad_mask, cache=cache[i] if cache else None, rope=rope, return_weights=return_weights,
                      mask=mask)
            if return_weights:
                x, w = x
                weights.append(w)
        return (self.ln_f(x), weights) if return_weights else self.ln_f(x)

    def forward(self, ids, *, positions=None, pad_mask=None, cache: list[KVCache] | None = None, segments=None,
                last_only: bool = False):
        """Next-token logits (B, T, vocab); `last_only`: the last position's alone (B, 1, vocab), all a prompt's
        prefill needs (the head over every position is a fifth of a small model's prefill and its largest tensor)."""
        hidden = self.hidden_states(ids, positions=positions, pad_mask=pad_mask, cache=cache, segments=segments)
        return self.lm_head(hidden[:, -1:] if last_only else hidden)

    def classify(self, ids, *, pad_mask=None, token_type_ids=None):
        """Class logits (B, n_labels) from the hidden state of the last real token of each row."""
        if self.classifier is None:
            raise ValueError("this model has no classification head (model.labels is empty)")
        if pad_mask is None:
            pad_mask = torch.ones_like(ids, dtype=torch.bool)
        positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.hidden_states(ids, positions=positions, pad_mask=pad_mask)
        # right padding: the last real token sits at (number of real tokens - 1)
        last = pad_mask.long().sum(-1).clamp(min=1) - 1
        return self.classifier(hidden[torch.arange(ids.size(0), device=ids.device), last])
