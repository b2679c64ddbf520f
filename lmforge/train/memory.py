"""Activation checkpointing: a model's repeated blocks keep only their inputs and recompute the rest in backward."""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..patching import forwards_replaced


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation: nothing to save, nothing to recompute
        return forward(*args, **kwargs)
    # non-reentrant: keyword arguments, autocast and the dropout RNG are replayed exactly in the recomputation
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def checkpoint_blocks(model: nn.Module, enabled: bool = True):
    """While inside, every module held in an nn.ModuleList of `model` (a Transformer's blocks) is checkpointed:
    activation memory drops to about one block's, for about one more forward pass of compute. Yields the count."""
    chosen = []
    if enabled:
        for holder in model.modules():
            if not isinstance(holder, nn.ModuleList):
                continue
            for block in holder:
                inside = any(block is not p and any(m is block for m in p.modules()) for p in chosen)
                if "forward" not in block.__dict__ and not inside:
                    chosen.append(block)
    with forwards_replaced((block, functools.partial(_checkpointed, block.forward)) for block in chosen) as count:
        yield count
