"""Structured pruning: whole attention heads (whole key/value groups under GQA) or MLP neurons are removed, so
the matrices really shrink; the model config records each layer's new size (model.layer_heads,
model.layer_intermediate).

Importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): a gate multiplies each head's
output (each neuron's activation); the importance of a unit is |dL/dgate| at gate = 1, summed over a few
batches, then normalized per layer so one global ranking compares layers. Without data, a weight-norm proxy
stands in: the norm of the unit's value rows (or input rows) times the norm of its output columns.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .sparse import prunable_linears

HEADS, NEURONS = "heads", "neurons"


def _sites(model: nn.Module, kind: str) -> list[tuple[nn.Linear, int]]:
    """Per block: the Linear whose input holds the units (attention's proj: heads side by side; the MLP's down:
    neurons), and the size of one unit in that input."""
    prunable_linears(model)  # the clear error for a baseline arch
    if kind == HEADS:
        return [(block.attn.proj, block.attn.head_dim) for block in model.h]
    return [(block.mlp.down, 1) for block in model.h]


@contextlib.contextmanager
def unit_gates(model: nn.Module, kind: str):
    """Within the block, every head's output (kind 'heads') or MLP neuron's activation ('neurons') is multiplied
    by a gate, one tensor of ones per layer (yielded; set entries to 0 to mask units, or read their gradients)."""
    gates, handles = [], []
    for linear, width in _sites(model, kind):
        gate = torch.ones(linear.in_features // width, device=linear.weight.device, requires_grad=True)
        gates.append(gate)

        def scale(module, inputs, gate=gate, width=width):
            x = inputs[0]
            shaped = x.unflatten(-1, (gate.numel(), width)) * gate.to(x.dtype)[:, None]
            return (shaped.flatten(-2),)
        handles.append(linear.register_forward_pre_hook(scale))
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def gradient_importance(model: nn.Module, kind: str, batches, loss_fn) -> list[torch.Tensor]:
    """Michel et al.'s importance: sum over `batches` of |dL/dgate| per unit, one tensor per layer."""
    was_training = model.training
    model.eval()  # no dropout: the score of the model as it is used
    totals = None
    try:
        with unit_gates(model, kind) as gates:
            for batch in batches:
                loss = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, gates)
                parts = [g.detach().abs() for g in grads]
                totals = parts if totals is None else [t + p for t, p in zip(totals, parts)]
    finally:
        model.train(was_training)
    if totals is None:
        raise ValueError("no batches to score the units on (the data gave none)")
    return totals


@torch.no_grad()
def weight_importance(model: nn.Module, kind: str) -> list[torch.Tensor]:
    """The data-free proxy: |unit's input-side rows| * |its output-side columns| (Frobenius norms)."""
    scores = []
    for block in model.h:
        if kind == HEADS:
            attn = block.attn
            d, h, kv = attn.head_dim, attn.n_head, attn.n_kv_head
            values = attn.qkv.weight[(h + kv) * d:].view(kv, d, -1).norm(dim=(1, 2))
            outputs = attn.proj.weight.view(-1, h, d).norm(dim=(0, 2))
            scores.append(outputs * values.repeat_interleave(h // kv))
        else:
            mlp = block.mlp
            inputs = mlp.up.weight.norm(dim=1)
            if mlp.swiglu:
                inputs = inputs * mlp.gate.weight.norm(dim=1)
            scores.append(inputs * mlp.down.weight.norm(dim=0))
    return scores


def group_sizes(model: nn.Module, kind: str) -> int:
    """Units removed together: a key/value group of heads under GQA (n_head / n_kv_head), else 1."""
    if kind == HEADS:
        attn = model.h[0].attn
        return attn.n_head // attn.n_kv_head
    return 1


def choose_kept(scores: list[torch.Tensor], amount, kind: str, group: int = 1) -> list[list[int]]:
    """Rank the units of all layers by importance (normalized per layer) and keep all but the `amount` least
    important (a share < 1 or a count >= 1); every layer keeps at least one group. Returns kept indices."""
    noun = "heads" if kind == HEADS else "MLP neurons"
    sizes = [s.numel() for s in scores]
    total = sum(sizes)
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
        raise ValueError(f"--amount must be a share in (0, 1) or a count >= 1 of {noun} to remove; got {amount!r}")
    if amount < 1:
        count = int(round(amount * total / group)) * group
    elif float(amount).is_integer():
        count = int(amount)
    else:
        raise ValueError(f"--amount {amount} is neither a share below 1 nor a whole count of {noun}")
    if count > total:
        raise ValueError(f"--amount {amount} asks to remove {count} {noun}, but the model has only {total} "
                         f"({len(sizes)} layers of {', '.join(map(str, sizes))})")
    if count % group:
        raise ValueError(f"--amount {amount}: with grouped-query attention heads go in whole key/value groups of "
                         f"{group} (they share one key and value); give a multiple of {group}")
    if count > total - group * len(sizes):
        raise ValueError(f"--amount {amount} would remove {count} of {total} {noun}, leaving a layer with none; "
                         f"at most {total - group * len(sizes)} can go (each of the {len(sizes)} layers keeps "
                         f"{'a group' if group > 1 else 'one'})")
    if count == 0:
        raise ValueError(f"--amount {amount} removes no {noun} from a model with {total} (round up the share)")
    ranked = []
    for layer, score in enumerate(scores):
        grouped = score.float().view(-1, group).sum(-1)
        grouped = grouped / grouped.norm().clamp_min(1e-12)  # per-layer normalization (Michel et al.)
        ranked += [(float(value), layer, index) for index, value in enumerate(grouped)]
    ranked.sort()
    left = [size // group for size in sizes]
    removed = [set() for _ in sizes]
    need = count // group
    for _, layer, index in ranked:
        if need == 0:
            break
        if left[layer] > 1:
            removed[layer].add(index)
            left[layer] -= 1
            need -= 1
    return [[unit for g in range(sizes[layer] // group) if g not in removed[layer]
             for unit in range(g * group, (g + 1) * group)] for layer in range(len(sizes))]


@torch.no_grad()
def _shrink(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = linear.bias
    out = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None, device=weight.device, dtype=weight.dtype)
    out.weight.copy_(weight)
    if bias is not None:
        out.bias.copy_(bias[rows] if rows is not None else bias)
    out.train(linear.training)
    return out


def remove_heads(model: nn.Module, kept: list[list[int]]) -> None:
    """Keep only the heads `kept[layer]` (whole key/value groups) of each block: shrink qkv and proj in place."""
    for block, heads in zip(model.h, kept):
        attn = block.attn
        d, h, kv = attn.head_dim, attn.n_head, attn.n_kv_head
        group = h // kv
        heads = torch.tensor(heads, device=attn.qkv.weight.device)
        groups = heads.view(-1, group)[:, 0] // group
        span = torch.arange(d, device=heads.device)
        q_rows = (heads[:, None] * d + span).flatten()
        k_rows = (h * d + groups[:, None] * d + span).flatten()
        v_rows = ((h + kv) * d + groups[:, None] * d + span).flatten()
        attn.qkv = _shrink(attn.qkv, rows=torch.cat([q_rows, k_rows, v_rows]))
        attn.proj = _shrink(attn.proj, cols=q_rows)
        attn.n_head, attn.n_kv_head = len(heads), len(groups)


def remove_neurons(model: nn.Module, kept: list[list[int]]) -> None:
    """Keep only the MLP neurons `kept[layer]` of each block: shrink up (and gate) rows and down columns."""
    for block, neurons in zip(model.h, kept):
        mlp = block.mlp
        index = torch.tensor(neurons, device=mlp.up.weight.device)
        mlp.up = _shrink(mlp.up, rows=index)
        if mlp.swiglu:
            mlp.gate = _shrink(mlp.gate, rows=index)
        mlp.down = _shrink(mlp.down, cols=index)
