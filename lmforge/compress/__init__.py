"""Compression: LoRA adapters, pruning, int8 quantization, distillation, and what they cost and buy.

The seam with model directories: a compressed model's config.json carries a "compression" list, one entry per
step applied, in order (e.g. [{"kind": "prune", ...}, {"kind": "quantize", "method": "dynamic-int8"}]). Loading
builds the plain model from the "model" section, then `restore` replays each entry's change of structure (LoRA
wrappers, int8 Linear modules, smaller matrices), so the weights file loads into it strictly. Each kind lives
in its own module, which provides `restore(model, config, spec, path) -> nn.Module`, and optionally
`pack(state, model, spec) -> state` to store its tensors its own way (a pruned model's nonzero values + a bitmask);
what `pack` writes, the structure `restore` built must load (e.g. through a load_state_dict pre-hook).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from safetensors.torch import save_file, save_model
from torch import nn

KINDS = {"lora": "lora", "prune": "prune", "quantize": "quantize"}  # kind -> module of this package


def _steps(meta: dict, path: Path | None = None) -> list[tuple[object, dict]]:
    """(module, spec) for each step of meta["compression"], in order; a malformed or unknown step is an error
    naming `path`'s config.json."""
    where = f"'{Path(path) / 'config.json'}'" if path is not None else "config.json"
    steps = meta.get("compression") or []
    if not isinstance(steps, list):
        raise ValueError(f"{where}: 'compression' must be a list of steps, got {steps!r}")
    modules = []
    for spec in steps:
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in KINDS:
            raise ValueError(f"{where} lists a compression step {spec!r} this lmforge cannot load; known kinds: "
                             f"{', '.join(KINDS)}")
        modules.append((importlib.import_module(f".{KINDS[kind]}", __name__), spec))
    return modules


def find_step(meta: dict, kind: str) -> dict | None:
    """The first step of config.json's "compression" list of this `kind` ("lora", "prune", "quantize"), or None."""
    steps = meta.get("compression") or []
    return next((s for s in steps if isinstance(s, dict) and s.get("kind") == kind), None)


def restore(model: nn.Module, config, meta: dict, path: Path) -> nn.Module:
    """Replay the structural changes listed in config.json's "compression" on a freshly built `model`."""
    for module, spec in _steps(meta, path):
        model = module.restore(model, config, spec, Path(path))
    return model


def card_lines(steps: list) -> list[str]:
    """The model card's "Compression" section: one line per step of config.json's "compression" list."""
    lines = ["## Compression", ""]
    for spec in steps:
        if not isinstance(spec, dict):
            continue
        details = ", ".join(f"{key}: {value}" for key, value in spec.items()
                            if key != "kind" and not isinstance(value, (list, dict)))
        lines.append(f"- {spec.get('kind')}" + (f" ({details})" if details else ""))
    return [*lines, ""]
def save_weights(model: nn.Module, file: Path, meta: dict) -> None:
    """Write `model`'s weights as safetensors; the steps of meta["compression"] whose module has `pack` rewrite
    the tensors first. Tied tensors (the LM head sharing the embedding) are written once, as save_model does."""
    packers = [(module, spec) for module, spec in _steps(meta) if hasattr(module, "pack")]
    if not packers:
        save_model(model, str(file))
        return
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key not in seen or tensor.numel() == 0:
            seen.add(key)
            state[name] = tensor
    for module, spec in packers:
        state = module.pack(state, model, spec)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(file))
