"""Gradient health: per-layer gradient norms, and warnings when a layer's gradients vanish or explode."""
from __future__ import annotations

import math

import torch
from torch import nn

VANISHING = 1e-7
EXPLODING_TIMES_CLIP = 100.0


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: 'h.3' for the blocks of model.h, else its top-level module ('wte')."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "h" and len(parts) > 2 else parts[0]


def layer_grad_norms(model: nn.Module, parallel=None) -> dict[str, float]:
    """L2 norm of the gradients of each layer (before clipping); sharded gradients are summed across ranks."""
    squares: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        grad = param.grad
        if hasattr(grad, "to_local"):  # an FSDP2 shard (DTensor): this rank's piece only
            grad = grad.to_local()
        value = grad.detach().float().pow(2).sum()
        key = layer_of(name)
        squares[key] = squares[key] + value if key in squares else value
    if not squares:
        return {}
    names = list(squares)
    totals = torch.stack([squares[n] for n in names])
    if parallel is not None and parallel.mode == "fsdp":
        totals = parallel.sum(totals)
    return {n: math.sqrt(v) for n, v in zip(names, totals.tolist())}


def gradient_warnings(norms: dict[str, float], clip: float, step: int) -> list[str]:
    """Plain warnings for layers whose gradient norm vanished (< 1e-7) or exploded (> 100x train.grad_clip)."""
    out = []
    for name, norm in norms.items():
        if norm < VANISHING:
            out.append(f"step {step}: gradients of layer {name} vanish (norm {norm:.2e} < {VANISHING:g}); "
                       "deep stacks need pre-norm blocks, residual paths and a sane init")
        elif clip > 0 and norm > EXPLODING_TIMES_CLIP * clip:
            out.append(f"step {step}: gradients of layer {name} explode (norm {norm:.3g} > {EXPLODING_TIMES_CLIP:g} x "
                       f"train.grad_clip {clip:g}); lower train.lr or raise train.warmup_steps")
    return out
