"""Growing a model's vocabulary: new embedding rows (and output rows) start at the mean of the old ones."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def resize_vocab(model: nn.Module, size: int) -> None:
    """Give `model` `size` token rows (never fewer than it has). A tied output layer stays tied; an untied one
    grows the same way. The mean row keeps a new token's first predictions ordinary instead of random."""
    old = model.wte.weight
    if size <= old.size(0):
        return
    wte = nn.Embedding(size, old.size(1), device=old.device, dtype=old.dtype)
    wte.weight[:old.size(0)] = old
    wte.weight[old.size(0):] = old.mean(0)
    head = model.lm_head
    tied = head.weight is old
    new_head = nn.Linear(old.size(1), size, bias=head.bias is not None, device=old.device, dtype=old.dtype)
    if tied:
        new_head.weight = wte.weight
    else:
        new_head.weight[:head.weight.size(0)] = head.weight
        new_head.weight[head.weight.size(0):] = head.weight.mean(0)
    if head.bias is not None:
        new_head.bias[:head.bias.size(0)] = head.bias
        new_head.bias[head.bias.size(0):] = head.bias.mean()
    model.wte, model.lm_head = wte, new_head
    model.config = model.config.model_copy(update={"vocab_size": size})
