"""Unstructured pruning: global magnitude pruning of the blocks' Linear weights, the zero pattern kept through
fine-tuning, and a compact file format (the nonzero values + a packed bitmask) restored on load."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.contract import transformer_blocks

VALUES, BITMASK = ".sparse_values", ".sparse_bitmask"  # suffixes of a packed weight's two tensors in the file


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers inside the Transformer blocks (attention and MLP): what pruning thins. Embeddings, the
    tied LM head and task heads stay dense (they are small, and the LM head shares the embedding table)."""
    blocks = transformer_blocks(model)
    if blocks is None:
        arch = model.config.arch
        raise ValueError(f"pruning works on the Transformers (arch gpt, llama, bert); this model is '{arch}'")
    return [(f"h.{name}", module) for name, module in blocks.named_modules() if isinstance(module, nn.Linear)]


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> dict:
    """Zero the `sparsity` share of the blocks' Linear weights with the smallest |w|, one ranking across all
    layers (global), so layers that matter less lose more. Returns counts for the report."""
    check_sparsity(sparsity)
    layers = prunable_linears(model)
    weights = [module.weight for _, module in layers]
    total = sum(w.numel() for w in weights)
    k = int(round(sparsity * total))
    if k:
        magnitudes = torch.cat([w.detach().abs().flatten().float() for w in weights])
        cut = torch.zeros(total, dtype=torch.bool, device=magnitudes.device)
        cut[magnitudes.argsort()[:k]] = True  # exactly k weights, ties broken by position
        start = 0
        for w in weights:
            w.masked_fill_(cut[start:start + w.numel()].view_as(w), 0.0)
            start += w.numel()
    return sparsity_report(model)


def check_sparsity(sparsity) -> None:
    """Sparsity is the share of weights set to zero: 0 <= s < 1 (1 would leave no weights at all)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"--sparsity must be a share of the weights in [0, 1), e.g. 0.5 for half of them; "
                         f"got {sparsity!r}")


def sparsity_report(model: nn.Module) -> dict:
    """Zeros among the blocks' Linear weights, in all and per layer."""
    layers = prunable_linears(model)
    per_layer = {name: float((module.weight == 0).float().mean()) for name, module in layers}
    zeros = sum(int((module.weight == 0).sum()) for _, module in layers)
    total = sum(module.weight.numel() for _, module in layers)
    return {"weights": total, "zeros": zeros, "sparsity": zeros / max(total, 1), "per_layer": per_layer}


def keep_zeros(model: nn.Module) -> list:
    """Make the blocks' zero weights stay zero under training: their gradient is masked. With AdamW a weight whose
    gradient is always zero never moves (its moments stay zero; decoupled decay scales 0 to 0), so the pattern
    holds through every optimizer step without the trainer knowing. The mask is read from the weight at each
    backward pass, so hooks set before the weights are loaded work too. Returns the hook handles."""
    handles = []
    for _, module in prunable_linears(model):
        weight = module.weight
        if getattr(weight, "_lmforge_keeps_zeros", False):  # once per parameter (structured pruning makes new ones)
            continue
        handles.append(weight.register_hook(lambda grad, weight=weight: grad * (weight != 0).to(grad.dtype)))
        weight._lmforge_keeps_zeros = True
    return handles


@torch.no_grad()
def apply_zeros(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set the weights named in `masks` (False = pruned) back to zero: a guard after training with an optimizer
    that might move zero-gradient weights."""
    for name, module in prunable_linears(model):
        if name in masks:
            module.weight.mul_(masks[name].to(module.weight.dtype))


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current nonzero pattern of each block Linear weight (True = kept)."""
    return {name: module.weight.detach() != 0 for name, module in prunable_linears(model)}


def pack(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Store each block Linear weight that is sparse enough to gain as its nonzero values (row-major order)
    plus a bitmask packed 8 per byte; the rest stays dense."""
    out = dict(state)
    for name, _ in prunable_linears(model):
        key = f"{name}.weight"
        weight = state.get(key)
        if weight is None:
            continue
        mask = weight != 0
        # dense costs numel * itemsize bytes; packed costs nnz * itemsize + numel / 8
        if int(mask.sum()) * weight.element_size() + weight.numel() / 8 >= weight.numel() * weight.element_size():
            continue
        flat = mask.flatten().cpu().numpy()
        del out[key]
        out[key + VALUES] = weight.flatten()[mask.flatten()].contiguous()
        out[key + BITMASK] = torch.from_numpy(np.packbits(flat))
    return out


def unpack_hook(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: rebuild dense weights from values + bitmask pairs, so a packed file loads
    strictly into the plain model (and resumes and fine-tunings read it the same way)."""
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith(BITMASK)]:
        name = key[len(prefix):-len(BITMASK)]
        values_key = prefix + name + VALUES
        if values_key not in state_dict:
            raise ValueError(f"packed weight '{name}' has a bitmask but no '{name}{VALUES}' tensor")
        target = module.get_parameter(name)
        bits = state_dict.pop(key).cpu().numpy()
        values = state_dict.pop(values_key)
        mask = torch.from_numpy(np.unpackbits(bits, count=target.numel()).astype(bool))
        if bits.size != (target.numel() + 7) // 8 or int(mask.sum()) != values.numel():
            raise ValueError(f"packed weight '{name}' does not fit the model: {values.numel()} values and "
                             f"{bits.size} mask bytes for a {list(target.shape)} matrix")
        dense = torch.zeros(target.numel(), dtype=values.dtype, device=values.device)
        dense[mask.to(values.device)] = values
        state_dict[prefix + name] = dense.view(target.shape)
