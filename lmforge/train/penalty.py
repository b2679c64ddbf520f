"""The L1 penalty, beside AdamW's weight decay (the L2 side).

Which parameters: every trainable parameter that weight decay decays (dim >= 2: the weight matrices of
linear layers, attention and MLP projections, the pooler, the classifier head, convolution kernels), except
embedding tables: the weight of any nn.Embedding (token, position, token-type), and an output layer tied
to one. Norm weights and biases are 1-D, so neither penalty touches them. The rule reads module types
only, so it holds for any model without knowing it.
"""
from __future__ import annotations

import torch
from torch import nn


def l1_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs the L1 penalty covers: trainable, dim >= 2, not an embedding table (tied or not)."""
    tables = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    return [(name, param) for name, param in model.named_parameters()
            if param.requires_grad and param.dim() >= 2 and id(param) not in tables]


def l1_penalty(params: list[nn.Parameter]) -> torch.Tensor:
    """sum |w| over `params`, in float32 (a 0-d tensor that carries gradients)."""
    if not params:
        return torch.zeros(())
    return torch.stack([param.float().abs().sum() for param in params]).sum()
