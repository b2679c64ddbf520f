"""Optimizer parameter groups and the learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig


def parameter_groups(model: nn.Module, cfg: TrainConfig, scaled: list[tuple[list[nn.Parameter], float]] | None = None):
    """AdamW groups: weight decay only on matrices (dim >= 2), none on biases and norm weights.

    `scaled` optionally lists (parameters, lr_scale) pairs (a classifier head, layer-wise decay);
    each pair becomes its own decay / no-decay groups carrying `lr_scale`.
    """
    if scaled is None:
        scaled = [(list(model.parameters()), 1.0)]
    groups, seen = [], set()
    for params, scale in scaled:
        unique = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in unique)
        decay = [p for p in unique if p.dim() >= 2]
        no_decay = [p for p in unique if p.dim() < 2]
        if decay:
            groups.append({"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": scale})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": scale})
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"parameter groups leave out trainable parameters: {missing[:5]}")
    return groups


def make_optimizer(model: nn.Module, cfg: TrainConfig, scaled=None, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW over parameter_groups; fused=False for FSDP's sharded parameters."""
    groups = parameter_groups(model, cfg, scaled)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr` over warmup_steps, then cosine decay to `min_lr` at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
