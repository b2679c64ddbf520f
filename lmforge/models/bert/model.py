"""BERT-style encoder: word + position + token-type embeddings, post-LayerNorm blocks (or, with
model.norm_position='pre', pre-LayerNorm blocks and a final LayerNorm), an MLM head tied
to the word embeddings, a [CLS] pooler and a classification head."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MLP, Attention, RotaryEmbedding, init_weights

if TYPE_CHECKING:  # annotations only: config.py reads the family registry in models/
    from ...config import ModelConfig


class EncoderBlock(nn.Module):
    """Post-norm block as in BERT: norm(x + attn(x)), then norm(x + mlp(x)); with cfg.norm_position 'pre':
    x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.attn, self.ln_1 = Attention(cfg, layer), nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp, self.ln_2 = MLP(cfg, exact_gelu=True, layer=layer), nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, pad_mask=None, return_weights: bool = False, rope=None):
        attended = self.attn(self.ln_1(x) if self.pre_norm else x, causal=False, pad_mask=pad_mask, rope=rope,
                             return_weights=return_weights)
        attended, weights = attended if return_weights else (attended, None)
        if self.pre_norm:
            x = x + self.drop(attended)
            x = x + self.drop(self.mlp(self.ln_2(x)))
        else:
            x = self.ln_1(x + self.drop(attended))
            x = self.ln_2(x + self.drop(self.mlp(x)))
        return (x, weights) if return_weights else x


class BERT(nn.Module):
    """A bidirectional encoder. forward(ids) -> MLM logits (B, T, vocab); classify(ids) -> (B, n_labels)."""

    is_causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        # absolute positions as in BERT, or rotary positions inside attention (model.position='rope')
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.block_size, cfg.rope_theta) if cfg.position == "rope" else None
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.ln_emb = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.n_layer))
        # pre-norm blocks leave the residual stream unnormalized: a final norm (post-norm models have none,
        # so their checkpoints keep exactly BERT's parameter names)
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps) if cfg.norm_position == "pre" else None
        # MLM head: transform, then a decoder tied to the word embeddings
        self.mlm_dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlm_ln = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=True)
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.classifier = nn.Linear(cfg.n_embd, len(cfg.labels), bias=cfg.classifier_bias) if cfg.labels else None
        init_weights(self, cfg.n_layer)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def hidden_states(self, ids, *, pad_mask=None, token_type_ids=None, return_weights: bool = False):
        """Encoder outputs (B, T, n_embd); with return_weights also each layer's attention (B, H, T, T)."""
        T = ids.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size={self.config.block_size}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)
        positions = torch.arange(T, device=ids.device)
        x = self.wte(ids) + self.wtt(token_type_ids)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        rope = self.rope(positions) if self.rope is not None else None
        x = self.drop(self.ln_emb(x))
        weights = []
        for block in self.h:
            if return_weights:
                x, w = block(x, pad_mask, return_weights=True, rope=rope)
                weights.append(w)
            else:
                x = block(x, pad_mask, rope=rope)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return (x, weights) if return_weights else x

    def forward(self, ids, *, pad_mask=None, token_type_ids=None):
        hidden = self.hidden_states(ids, pad_mask=pad_mask, token_type_ids=token_type_ids)
        return self.mlm_logits(hidden)

    def mlm_logits(self, hidden):
        return self.lm_head(self.mlm_ln(F.gelu(self.mlm_dense(hidden))))

    def pooled(self, ids, *, pad_mask=None, token_type_ids=None):
        """The sentence vector the classifier reads (B, n_embd): see ModelConfig.pooling."""
        hidden = self.hidden_states(ids, pad_mask=pad_mask, token_type_ids=token_type_ids)
        if self.config.pooling == "mean":
            keep = torch.ones_like(ids, dtype=hidden.dtype) if pad_mask is None else pad_mask.to(hidden.dtype)
            return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return torch.tanh(self.pooler(hidden[:, 0]))

    def classify(self, ids, *, pad_mask=None, token_type_ids=None):
        """Class logits (B, n_labels) from the pooled [CLS] state."""
        if self.classifier is None:
            raise ValueError("this model has no classification head (model.labels is empty)")
        return self.classifier(self.drop(self.pooled(ids, pad_mask=pad_mask, token_type_ids=token_type_ids)))
