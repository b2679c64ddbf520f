"""Pruning a model: global magnitude pruning (zeros in place, stored as values + bitmask) or the removal of
attention heads / MLP neurons (smaller matrices). The pipeline around it (importance on data, a short fine-tune,
before/after metrics) is app/workflows/prune.py.

config.json records the step as {"kind": "prune", "method": ..., ...} in its "compression" list; `restore`
replays it on load (the unpacking of magnitude-pruned weights; structured sizes come from model.layer_heads /
model.layer_intermediate, which the model builds from directly).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from . import sparse, structured

if TYPE_CHECKING:
    from ..bundle import Bundle

METHODS = ("magnitude", "heads", "neurons")


def restore(model: nn.Module, config, spec: dict, path: Path) -> nn.Module:
    """Prepare a freshly built model for a pruned directory's weights (see the compression seam)."""
    method = spec.get("method")
    if method not in METHODS:
        raise ValueError(f"'{path / 'config.json'}' lists a prune step with method {method!r}; this lmforge "
                         f"knows {', '.join(METHODS)}")
    if method == "magnitude":
        sparse_model(model)
    elif (method == "heads" and not config.layer_heads) or (method == "neurons" and not config.layer_intermediate):
        key = "layer_heads" if method == "heads" else "layer_intermediate"
        raise ValueError(f"'{path / 'config.json'}' says its {method} were pruned but its model section has no "
                         f"'{key}' (each layer's new size); the file was edited or damaged")
    return model


def pack(state: dict, model: nn.Module, spec: dict) -> dict:
    """A magnitude-pruned model's block weights go to the file as values + bitmask (see sparse.pack)."""
    return sparse.pack(state, model) if spec.get("method") == "magnitude" else state


def sparse_model(model: nn.Module) -> nn.Module:
    """Give a model the two behaviours of a magnitude-pruned one: packed weights load into it, and its zero
    weights stay zero when it is trained (gradient masks). Idempotent."""
    if not getattr(model, "_lmforge_sparse", False):
        model.register_load_state_dict_pre_hook(sparse.unpack_hook)
        model._lmforge_sparse = True
    sparse.keep_zeros(model)  # also covers Linears that head / neuron removal has just replaced
    return model


def check_request(bundle: Bundle, method: str, sparsity=None, amount=None, data=None, finetune_steps: int = 0,
                  importance: str | None = None) -> None:
    """Every argument checked before any work (nothing is written when one is wrong)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "magnitude":
        if amount is not None:
            raise ValueError("--amount is for --method heads or neurons; magnitude pruning takes --sparsity")
        sparse.check_sparsity(sparsity)
        if importance is not None:
            raise ValueError("--importance is for --method heads or neurons (magnitude pruning ranks by |weight|)")
    else:
        if sparsity is not None:
            raise ValueError(f"--sparsity is for --method magnitude; --method {method} takes --amount "
                             "(a share of the units, e.g. 0.25, or a count)")
        if amount is None:
            raise ValueError(f"--method {method} needs --amount: the share (e.g. 0.25) or number of "
                             f"{'heads' if method == 'heads' else 'neurons'} to remove")
        if importance not in (None, "gradient", "weight"):
            raise ValueError(f"--importance must be 'gradient' (needs --data) or 'weight', got {importance!r}")
        if importance == "gradient" and data is None:
            raise ValueError("--importance gradient scores units on data: give --data (or use --importance weight)")
    if not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be a whole number >= 0, got {finetune_steps!r}")
    if finetune_steps and data is None:
        raise ValueError(f"--finetune-steps {finetune_steps} needs --data to fine-tune on")
    steps = bundle.meta.get("compression") or []
    other = [spec.get("kind") for spec in steps if isinstance(spec, dict) and spec.get("kind") != "prune"]
    if other:
        raise ValueError(f"this model is already compressed ({', '.join(map(str, other))}); prune the model "
                         "before quantizing it, and merge LoRA adapters first (`lmforge lora merge`)")
    sparse.prunable_linears(bundle.model)  # a baseline arch (lstm, textcnn ...) gets its clear error here


def remove_units(bundle: Bundle, method: str, amount, importance: str, task, batch_size: int, score_batches: int,
                 log) -> tuple[dict, Bundle]:
    """Score and remove heads or neurons of the bundle's model (in place); the step's spec, and the Bundle whose
    config has each layer's new size."""
    kind = structured.HEADS if method == "heads" else structured.NEURONS
    model = bundle.model
    group = structured.group_sizes(model, kind)
    if importance == "gradient":
        batches = (task.train_batch(step, 0, batch_size) for step in range(score_batches))
        scores = structured.gradient_importance(model, kind, batches, lambda m, b: task.loss(m, b)[0])
    else:
        scores = structured.weight_importance(model, kind)
    kept = structured.choose_kept(scores, amount, kind, group)
    before = [s.numel() for s in scores]
    removed = {str(layer): [i for i in range(size) if i not in set(keep)]
               for layer, (size, keep) in enumerate(zip(before, kept)) if len(keep) < size}
    if kind == structured.HEADS:
        structured.remove_heads(model, kept)
        key = "layer_heads"
    else:
        structured.remove_neurons(model, kept)
        key = "layer_intermediate"
    if getattr(model, "_lmforge_sparse", False):  # magnitude-pruned before: its new, smaller Linears keep zeros too
        sparse_model(model)
    sizes = [len(keep) for keep in kept]
    model_cfg = bundle.config.model_copy(update={key: sizes})
    model_cfg = type(model_cfg).model_validate(model_cfg.model_dump())  # the checks of a config read from disk
    model.config = model_cfg
    noun = "heads" if kind == structured.HEADS else "MLP neurons"
    log(f"removed {sum(before) - sum(sizes)} of {sum(before)} {noun} by {importance} importance; "
        f"per layer now {sizes}")
    spec = {"kind": "prune", "method": method, "amount": amount, "importance": importance, key: sizes}
    if kind == structured.HEADS:
        spec["removed_heads"] = removed
    return spec, replace(bundle, config=model_cfg)
