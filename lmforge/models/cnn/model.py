"""Kim (2014)'s convolutional sentence classifier: word embeddings, parallel 1-d convolutions of several widths,
batch normalization (switchable), ReLU, max-over-time pooling, dropout and a linear classifier."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # annotations only: config.py reads the family registry in models/
    from ...config import ModelConfig



class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (B, C, L) whose batch statistics count only the valid positions, so the padding a
    batch happens to carry does not move them. Same parameters and buffers as nn.BatchNorm1d."""

    def forward(self, x, valid=None):
        if valid is None or not self.training:
            return super().forward(x)
        flat = x.transpose(1, 2)[valid]  # (N valid positions, C)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        normed = F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias, True,
                              self.momentum, self.eps)
        out = torch.zeros_like(x.transpose(1, 2))
        out[valid] = normed
        return out.transpose(1, 2)


class TextCNN(nn.Module):
    """classify(ids, pad_mask) -> class logits (B, n_labels). A classifier only: it has no language-model head."""

    is_causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.convs = nn.ModuleList(nn.Conv1d(cfg.n_embd, cfg.n_filters, k, bias=not cfg.batch_norm)
                                   for k in cfg.kernel_sizes)
        self.norms = nn.ModuleList(MaskedBatchNorm1d(cfg.n_filters) for _ in cfg.kernel_sizes) if cfg.batch_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.embd_drop = nn.Dropout(cfg.embd_dropout or 0.0)  # model.embd_dropout: on the token embeddings
        self.classifier = nn.Linear(self.feature_size, len(cfg.labels)) if cfg.labels else None
        nn.init.uniform_(self.wte.weight, -0.25, 0.25)  # Kim's range for words without a pretrained vector

    @property
    def feature_size(self) -> int:
        """Width of the pooled sentence vector the classifier reads."""
        return self.config.n_filters * len(self.config.kernel_sizes)

    def features(self, ids, *, pad_mask=None):
        """The max-over-time pooled features (B, n_filters * len(kernel_sizes)), before dropout."""
        if ids.size(1) > self.config.block_size:
            raise ValueError(f"sequence of {ids.size(1)} tokens exceeds block_size={self.config.block_size}")
        if pad_mask is None:
            pad_mask = torch.ones_like(ids, dtype=torch.bool)
        pad_mask = pad_mask.bool()
        widest, wide = max(self.config.kernel_sizes), self.config.wide_conv
        if ids.size(1) < widest and not wide:  # a sentence shorter than a kernel is padded with zero vectors
            extra = widest - ids.size(1)
            ids, pad_mask = F.pad(ids, (0, extra)), F.pad(pad_mask, (0, extra), value=False)
        x = (self.embd_drop(self.wte(ids)) * pad_mask[..., None]).transpose(1, 2)  # padding contributes zero vectors
        # windows that start inside the text (or at 0); wide: also those reaching over either end into zeros
        lengths = pad_mask.sum(-1) if wide else pad_mask.sum(-1).clamp(min=widest)
        pooled = []
        for i, conv in enumerate(self.convs):
            k = conv.kernel_size[0]
            h = conv(F.pad(x, (k - 1, k - 1)) if wide else x)  # (B, n_filters, L - k + 1), wide: L + k - 1
            last = lengths + k - 2 if wide else lengths - k  # the last window's start
            valid = torch.arange(h.size(-1), device=ids.device)[None, :] <= last[:, None]
            if self.norms is not None:
                h = self.norms[i](h, valid)
            h = F.relu(h).masked_fill(~valid[:, None, :], float("-inf"))
            pooled.append(h.amax(-1))
        return torch.cat(pooled, -1)

    def classify(self, ids, *, pad_mask=None, token_type_ids=None):
        """Class logits (B, n_labels)."""
        if self.classifier is None:
            raise ValueError("this model has no classification head (model.labels is empty)")
        return self.classifier(self.drop(self.features(ids, pad_mask=pad_mask)))

    def forward(self, ids, *, pad_mask=None, token_type_ids=None):
        return self.classify(ids, pad_mask=pad_mask)

    def describe(self) -> str:
        """One line for the model card."""
        cfg = self.config
        return (f"A TextCNN classifier (Kim, 2014): {cfg.n_embd}-dimensional word embeddings, {cfg.n_filters} "
                f"filters of each width {cfg.kernel_sizes}, {'with' if cfg.batch_norm else 'without'} batch "
                f"normalization{', zero-padded at both ends' if cfg.wide_conv else ''}, max-over-time pooling; "
                f"inputs up to {cfg.block_size} tokens")
